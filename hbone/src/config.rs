//! HTTP/2 and pool settings for HBONE, with Istio ztunnel's defaults (docs/wire.md §2.2, §2.6).

use std::time::Duration;

/// Settings shared by the HBONE client and server.
#[derive(Clone, Debug)]
pub struct HboneConfig {
    /// Initial per-stream flow-control window we advertise (4 MiB).
    pub stream_window: u32,
    /// Initial connection flow-control window we advertise (16 MiB).
    pub connection_window: u32,
    /// Largest frame we accept (1 MiB).
    pub max_frame_size: u32,
    /// Largest header list the client accepts (16 KiB).
    pub client_max_header_list: u32,
    /// Largest header list the server accepts (64 KiB).
    pub server_max_header_list: u32,
    /// Concurrent streams the server advertises (200).
    pub server_max_streams: u32,
    /// Concurrent streams the client opens on one connection at most, before the
    /// peer's own limit is applied (100).
    pub client_max_streams: u32,
    /// Interval between keepalive PINGs, the first one after the same delay (10 s).
    pub keepalive_interval: Duration,
    /// How long to wait for a PONG before dropping the connection (20 s).
    pub keepalive_timeout: Duration,
    /// Pooled connections with no stream for this long are closed (5 min).
    pub pool_idle_timeout: Duration,
    /// A key's connections beyond one warm one are closed after this long
    /// with no stream (10 s): a burst's extra connections go soon, and with
    /// them the buffers and stream tables h2 and TLS keep at the burst's
    /// high-water size (≈160 KiB each after a 1,000-connection burst), while
    /// one stays for `pool_idle_timeout` so the next tunnel needs no handshake.
    pub pool_surplus_idle_timeout: Duration,
    /// TCP connect timeout for dialing peers and upstreams (10 s).
    pub connect_timeout: Duration,
}

impl Default for HboneConfig {
    fn default() -> Self {
        HboneConfig {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            client_max_header_list: 16 * 1024,
            server_max_header_list: 64 * 1024,
            server_max_streams: 200,
            client_max_streams: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            pool_idle_timeout: Duration::from_secs(300),
            pool_surplus_idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl HboneConfig {
    pub(crate) fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.client_max_header_list)
            .initial_max_send_streams(self.client_max_streams as usize)
            .enable_push(false);
        b
    }

    pub(crate) fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.server_max_header_list)
            .max_concurrent_streams(self.server_max_streams);
        b
    }
}
