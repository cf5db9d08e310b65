//! Connection pooling: 150 concurrent tunnels from A to B share exactly as many
//! TLS connections as the stream limit requires; another source identity never
//! reuses them; finished streams free their slots for reuse.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ambit_e2e::pki::{self, id};
use ambit_hbone::client::{PoolKey, TunnelTarget};
use ambit_hbone::request::ConnectHead;
use ambit_hbone::server::ServerStats;
use ambit_hbone::{DirectHandler, HboneConfig, Pool, StaticServerTls, Tunnel};

/// Streams one connection carries at most: ztunnel's rule is "until one more
/// stream would reach the limit", and the limit is min(100, peer's 200).
const STREAMS_PER_CONN: usize = 99;

/// Workload A's side of tunnels to an HBONE server presenting B's identity,
/// in front of an echo server.
struct AtoB {
    root: ambit_hbone::ca::Authority,
    a: ambit_identity::SpiffeId,
    b: ambit_identity::SpiffeId,
    cert_a: ambit_hbone::WorkloadCertificate,
    server: Arc<ambit_hbone::server::HboneServer<DirectHandler>>,
    addr: std::net::SocketAddr,
    target: TunnelTarget,
}

async fn a_to_b() -> AtoB {
    ambit_e2e::init_tracing();
    let root = pki::root("cluster.local", "root");
    let (a, b) = (id("ns-a", "a"), id("ns-b", "b"));
    let cert_a = pki::issue(&root, &a, pki::valid());
    let cert_b = pki::issue(&root, &b, pki::valid());
    let echo = ambit_e2e::echo_server().await;
    let (server, addr) = ambit_e2e::start_hbone(
        HboneConfig::default(),
        Arc::new(StaticServerTls::new(&cert_b)),
        DirectHandler::default(),
    )
    .await;
    let target = TunnelTarget {
        dial: addr,
        expected: vec![b.clone()],
        src_ip: None,
        head: ConnectHead::to_addr(echo),
        socket: None,
    };
    AtoB {
        root,
        a,
        b,
        cert_a,
        server,
        addr,
        target,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_opens_connections_per_stream_limit_and_never_shares_identities() {
    let AtoB {
        root,
        a,
        b,
        cert_a,
        server,
        addr,
        target,
    } = a_to_b().await;
    let c = id("ns-c", "c");
    let cert_c = pki::issue(&root, &c, pki::valid());
    let pool = Pool::new(HboneConfig::default());

    // 150 tunnels opened at once, all held open together.
    let mut tasks = Vec::new();
    for i in 0..150u32 {
        let (pool, cert_a, target) = (pool.clone(), cert_a.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = pool.connect(&cert_a, &target).await.expect("tunnel");
            let msg = format!("tunnel {i}");
            let back = ambit_e2e::round_trip(&mut t, msg.as_bytes())
                .await
                .expect("echo");
            assert_eq!(back, msg.as_bytes());
            t
        }));
    }
    let mut tunnels: Vec<Tunnel> = Vec::new();
    for t in tasks {
        tunnels.push(t.await.expect("task"));
    }
    let expected_conns = 150usize.div_ceil(STREAMS_PER_CONN);
    assert_eq!(expected_conns, 2);
    let mut per_conn: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &tunnels {
        *per_conn.entry(t.connection_id()).or_default() += 1;
        assert_eq!(t.peer_identity(), &b);
    }
    assert_eq!(
        per_conn.len(),
        expected_conns,
        "streams per connection: {per_conn:?}"
    );
    assert!(
        per_conn.values().all(|n| *n <= STREAMS_PER_CONN),
        "{per_conn:?}"
    );
    assert_eq!(pool.stats().connections_opened.load(Ordering::Relaxed), 2);
    assert_eq!(
        ServerStats::get(&server.stats().connections_accepted),
        2,
        "server saw exactly two TLS connections"
    );
    let key_a = PoolKey {
        source: a.clone(),
        expected: vec![b.clone()],
        src_ip: None,
        dst: addr,
    };
    assert_eq!(pool.connections_for(&key_a), 2);

    // Another source identity to the same destination never reuses A's connections,
    // even though they have free slots.
    let mut tc = pool.connect(&cert_c, &target).await.expect("tunnel as c");
    assert!(!per_conn.contains_key(&tc.connection_id()));
    assert_eq!(
        ambit_e2e::round_trip(&mut tc, b"c").await.expect("echo"),
        b"c"
    );
    assert_eq!(ServerStats::get(&server.stats().connections_accepted), 3);
    let key_c = PoolKey {
        source: c.clone(),
        ..key_a.clone()
    };
    assert_eq!(pool.connections_for(&key_c), 1);

    // A different expected-identity list is a different key too.
    let target_alt = TunnelTarget {
        expected: vec![c.clone(), b.clone()],
        ..target.clone()
    };
    let t_alt = pool
        .connect(&cert_a, &target_alt)
        .await
        .expect("tunnel alt key");
    assert!(!per_conn.contains_key(&t_alt.connection_id()));
    assert_eq!(ServerStats::get(&server.stats().connections_accepted), 4);

    // Bytes the app sent before the tunnel existed go out with the CONNECT
    // and reach the upstream ahead of everything written later.
    let mut early = pool
        .connect_with_data(&cert_a, &target, bytes::Bytes::from_static(b"early "))
        .await
        .expect("tunnel with early data");
    let back = ambit_e2e::round_trip_after_early(&mut early, b"early ", b"late")
        .await
        .expect("echo");
    assert_eq!(back, b"early late");
    drop(early);

    // Closing streams frees slots: 120 more tunnels fit on the two existing
    // connections once the first 150 are gone.
    drop(tunnels);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut again = Vec::new();
    for _ in 0..120 {
        again.push(pool.connect(&cert_a, &target).await.expect("reuse"));
    }
    assert_eq!(
        ServerStats::get(&server.stats().connections_accepted),
        4,
        "no new connection after slots were freed"
    );
    let reused: std::collections::BTreeSet<_> = again.iter().map(|t| t.connection_id()).collect();
    assert!(
        reused.iter().all(|id| per_conn.contains_key(id)),
        "{reused:?}"
    );
}

/// After a burst, the extra connections it needed close once idle for the
/// surplus timeout; one stays warm for the next tunnel (no new handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_extra_connections_close_when_idle_and_one_stays_warm() {
    let AtoB {
        a,
        b,
        cert_a,
        server,
        addr,
        target,
        ..
    } = a_to_b().await;
    let surplus = std::time::Duration::from_millis(300);
    let pool = Pool::new(HboneConfig {
        pool_surplus_idle_timeout: surplus,
        ..HboneConfig::default()
    });
    let key = PoolKey {
        source: a.clone(),
        expected: vec![b.clone()],
        src_ip: None,
        dst: addr,
    };
    let burst = 2 * STREAMS_PER_CONN + 1;
    let mut tunnels = Vec::new();
    for _ in 0..burst {
        tunnels.push(pool.connect(&cert_a, &target).await.expect("tunnel"));
    }
    assert_eq!(pool.connections_for(&key), 3);

    // One tunnel stays open: the connection carrying it is in use, so both
    // idle ones go.
    let kept = tunnels.pop().expect("one tunnel");
    drop(tunnels);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.connections_for(&key) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(surplus / 3).await;
    }
    assert_eq!(
        pool.connections_for(&key),
        1,
        "only the busy connection stays"
    );

    // With nothing in use, the last connection is kept warm, not closed.
    let busy = kept.connection_id();
    drop(kept);
    tokio::time::sleep(surplus * 4).await;
    assert_eq!(pool.connections_for(&key), 1, "one connection kept warm");
    let mut t = pool.connect(&cert_a, &target).await.expect("tunnel");
    assert_eq!(t.connection_id(), busy, "the warm connection is reused");
    assert_eq!(
        ambit_e2e::round_trip(&mut t, b"warm").await.expect("echo"),
        b"warm"
    );
    assert_eq!(
        ServerStats::get(&server.stats().connections_accepted),
        3,
        "no handshake for the tunnel after the burst"
    );
}
