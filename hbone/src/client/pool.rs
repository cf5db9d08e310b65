//! The HBONE connection pool.
//!
//! Keyed as Istio's ztunnel keys it (istio-wire §2.6): source identity, the
//! ordered list of expected server identities, source IP and destination
//! address. Connections are never shared across source identities. A connection
//! takes new streams until one more would reach its stream limit; then a new
//! connection is opened. Opening is serialized per key, so a burst of requests
//! for a fresh key opens one connection, not one per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::StatusCode;
use tracing::debug;

use super::connection::{PooledConn, StreamSlot};
use super::{ClientError, Tunnel, TunnelTarget};
use crate::cert::WorkloadCertificate;
use crate::config::HboneConfig;
use crate::identity::SpiffeId;
use crate::stream::H2Stream;

/// What makes two tunnels eligible to share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity we present.
    pub source: SpiffeId,
    /// The server identities we accept, in order.
    pub expected: Vec<SpiffeId>,
    /// The source IP we dial from.
    pub src_ip: Option<IpAddr>,
    /// The peer's HBONE address.
    pub dst: SocketAddr,
}

/// Pool counters.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// HBONE connections opened (TCP + TLS + HTTP/2).
    pub connections_opened: AtomicU64,
    /// Tunnels (CONNECT streams) established.
    pub tunnels_opened: AtomicU64,
}

#[derive(Default)]
struct KeyPool {
    conns: Mutex<Vec<Arc<PooledConn>>>,
    /// Held while a connection for this key is being opened.
    opening: tokio::sync::Mutex<()>,
}

impl KeyPool {
    fn reserve_existing(&self, idle: std::time::Duration) -> Option<(Arc<PooledConn>, StreamSlot)> {
        let mut conns = self.conns.lock().ok()?;
        conns.retain(|c| !c.is_closed() && !c.idle_for(idle));
        conns
            .iter()
            .find_map(|c| c.try_reserve().map(|slot| (c.clone(), slot)))
    }
}

/// A pool of HBONE connections, shared by every tunnel a process opens.
pub struct Pool {
    config: HboneConfig,
    keys: Mutex<HashMap<PoolKey, Arc<KeyPool>>>,
    stats: PoolStats,
    next_conn_id: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats).finish()
    }
}

impl Pool {
    /// A new pool. When called inside a tokio runtime it also starts a sweeper that
    /// drops connections idle for `config.pool_idle_timeout`.
    pub fn new(config: HboneConfig) -> Arc<Self> {
        let pool = Arc::new(Pool {
            config,
            keys: Mutex::default(),
            stats: PoolStats::default(),
            next_conn_id: AtomicU64::new(1),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pool), pool.config.pool_idle_timeout));
        }
        pool
    }

    /// Pool counters.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Live connections held for `key`.
    pub fn connections_for(&self, key: &PoolKey) -> usize {
        self.key_pool_if_present(key)
            .and_then(|kp| {
                kp.conns
                    .lock()
                    .ok()
                    .map(|c| c.iter().filter(|c| !c.is_closed()).count())
            })
            .unwrap_or(0)
    }

    fn key_pool_if_present(&self, key: &PoolKey) -> Option<Arc<KeyPool>> {
        self.keys.lock().ok()?.get(key).cloned()
    }

    fn key_pool(&self, key: &PoolKey) -> Arc<KeyPool> {
        let mut keys = match self.keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Looked up before inserting: the key is cloned only for a new entry.
        if let Some(kp) = keys.get(key) {
            return kp.clone();
        }
        keys.entry(key.clone()).or_default().clone()
    }

    /// Opens a tunnel to `target` as `source`, reusing a pooled connection when one
    /// has room.
    pub async fn connect(
        &self,
        source: &WorkloadCertificate,
        target: &TunnelTarget,
    ) -> Result<Tunnel, ClientError> {
        self.connect_with_data(source, target, Bytes::new()).await
    }

    /// As [`connect`](Self::connect), and `early` (bytes the app already sent)
    /// goes out as a DATA frame right behind the CONNECT, in the same write,
    /// instead of after the peer's 200: one write and one round trip less
    /// for client-first protocols. The peer holds it in the stream's receive
    /// window until it has connected upstream; if it refuses the stream, the
    /// bytes go nowhere, like the connection.
    pub async fn connect_with_data(
        &self,
        source: &WorkloadCertificate,
        target: &TunnelTarget,
        early: Bytes,
    ) -> Result<Tunnel, ClientError> {
        let key = PoolKey {
            source: source.identity().clone(),
            expected: target.expected.clone(),
            src_ip: target.src_ip,
            dst: target.dial,
        };
        let (conn, slot) = self.checkout(&key, source, target).await?;
        let request = target.head.to_request()?;
        let mut sender = conn.sender.clone().ready().await?;
        let (response, mut send) = sender.send_request(request, false)?;
        if !early.is_empty() {
            // At most 16 KiB, within any usual stream window (h2 queues it
            // until the peer grants capacity otherwise).
            send.send_data(early, false)?;
        }
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::Refused(response.status()));
        }
        let (parts, recv) = response.into_parts();
        self.stats.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Tunnel::new(
            H2Stream::new(send, recv),
            conn.peer_identity.clone(),
            parts.headers,
            conn.id,
            conn.tls_info.clone(),
            slot,
        ))
    }

    async fn checkout(
        &self,
        key: &PoolKey,
        source: &WorkloadCertificate,
        target: &TunnelTarget,
    ) -> Result<(Arc<PooledConn>, StreamSlot), ClientError> {
        let idle = self.config.pool_idle_timeout;
        let kp = self.key_pool(key);
        if let Some(found) = kp.reserve_existing(idle) {
            return Ok(found);
        }
        let _opening = kp.opening.lock().await;
        // Someone may have opened one while we waited.
        if let Some(found) = kp.reserve_existing(idle) {
            return Ok(found);
        }
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        // Boxed: the TCP + TLS + HTTP/2 handshake state (a 4 KiB future) is
        // then allocated by the one task that opens a connection instead of
        // being part of every tunnel's set-up future (ztunnel's outbound one
        // measured 9.8 KiB with it inline, 1.7 KiB without; a burst of 1,000
        // connections waits here).
        let open = Box::pin(PooledConn::open(id, &self.config, source, target));
        let conn = open.await?;
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let slot = conn
            .try_reserve()
            .ok_or_else(|| ClientError::H2(h2::Error::from(h2::Reason::REFUSED_STREAM)))?;
        if let Ok(mut conns) = kp.conns.lock() {
            conns.push(conn.clone());
        }
        debug!(conn = id, key = ?key.dst, "new pooled connection");
        Ok((conn, slot))
    }

    fn sweep_once(&self) {
        let idle = self.config.pool_idle_timeout;
        if let Ok(mut keys) = self.keys.lock() {
            keys.retain(|_, kp| match kp.conns.lock() {
                Ok(mut conns) => {
                    conns.retain(|c| !c.is_closed() && !c.idle_for(idle));
                    !conns.is_empty() || kp.opening.try_lock().is_err()
                }
                Err(_) => false,
            });
        }
    }
}

async fn sweep(pool: Weak<Pool>, idle: std::time::Duration) {
    let period = (idle / 4).max(std::time::Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.sweep_once(),
            None => return,
        }
    }
}
