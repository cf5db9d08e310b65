//! The HBONE connection pool.
//!
//! Keyed as Istio's ztunnel keys it (docs/wire.md §2.6): source identity, the
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
use crate::stream::H2Stream;
use ambit_identity::SpiffeId;

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

/// When pooled connections are let go.
#[derive(Clone, Copy)]
struct Retire {
    /// Any connection idle this long.
    idle: std::time::Duration,
    /// Beyond one kept warm, a connection idle this long.
    surplus_idle: std::time::Duration,
}

impl Retire {
    fn from(config: &HboneConfig) -> Self {
        Retire {
            idle: config.pool_idle_timeout,
            surplus_idle: config
                .pool_surplus_idle_timeout
                .min(config.pool_idle_timeout),
        }
    }

    /// Drops closed connections, those idle for `idle`, and those idle for
    /// `surplus_idle` except one, kept warm when no other is in use. Dropping
    /// the last handle to an idle connection closes it. Runs on every
    /// checkout: one pass, each connection's idle time read once.
    fn apply(self, conns: &mut Vec<Arc<PooledConn>>) {
        // Some connection is in use or was recently.
        let mut warm = false;
        // Where the first surplus-idle connection kept ended up.
        let mut kept_idle = None;
        let mut kept = 0;
        conns.retain(|c| {
            let keep = !c.is_closed()
                && match c.idle_time() {
                    Some(t) if t >= self.idle => false,
                    Some(t) if t >= self.surplus_idle => {
                        let first = kept_idle.is_none();
                        if first {
                            kept_idle = Some(kept);
                        }
                        first
                    }
                    _ => {
                        warm = true;
                        true
                    }
                };
            kept += usize::from(keep);
            keep
        });
        if let (true, Some(i)) = (warm, kept_idle) {
            conns.remove(i);
        }
    }
}

impl KeyPool {
    fn reserve_existing(&self, retire: Retire) -> Option<(Arc<PooledConn>, StreamSlot)> {
        let mut conns = self.conns.lock().ok()?;
        retire.apply(&mut conns);
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
    /// drops connections idle for `config.pool_idle_timeout` (and surplus ones
    /// idle for `config.pool_surplus_idle_timeout`).
    pub fn new(config: HboneConfig) -> Arc<Self> {
        let pool = Arc::new(Pool {
            config,
            keys: Mutex::default(),
            stats: PoolStats::default(),
            next_conn_id: AtomicU64::new(1),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let retire = Retire::from(&pool.config);
            let period = (retire.surplus_idle / 2).min(retire.idle / 4);
            rt.spawn(sweep(Arc::downgrade(&pool), period));
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
        let retire = Retire::from(&self.config);
        let kp = self.key_pool(key);
        if let Some(found) = kp.reserve_existing(retire) {
            return Ok(found);
        }
        let _opening = kp.opening.lock().await;
        // Someone may have opened one while we waited.
        if let Some(found) = kp.reserve_existing(retire) {
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
        let retire = Retire::from(&self.config);
        if let Ok(mut keys) = self.keys.lock() {
            keys.retain(|_, kp| match kp.conns.lock() {
                Ok(mut conns) => {
                    retire.apply(&mut conns);
                    !conns.is_empty() || kp.opening.try_lock().is_err()
                }
                Err(_) => false,
            });
        }
    }
}

async fn sweep(pool: Weak<Pool>, period: std::time::Duration) {
    let period = period.max(std::time::Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.sweep_once(),
            None => return,
        }
    }
}
