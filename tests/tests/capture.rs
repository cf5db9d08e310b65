//! eBPF capture on real namespaces: connect4 + sockops redirect an enrolled
//! namespace's outbound TCP to its in-namespace 15001 listener and remember the
//! original destination; marked sockets and un-enrolled namespaces pass through;
//! sk_lookup steers inbound plaintext into 15006; the socket-level load balancer
//! spreads a VIP over its backends for un-enrolled pods.

use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use ambit_e2e::netns::{TestNetns, ip_in};
use ambit_ebpf::{Capture, ZTUNNEL_MARK};
use ambit_proxy_core::netns::Netns;
use socket2::{Domain, Socket, Type};

/// Capture programs attach at the cgroup root, shared by every test in this
/// binary: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn connect_in(ns: &Netns, to: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    ns.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if let Some(m) = mark {
            s.set_mark(m)?;
        }
        s.connect_timeout(&to.into(), Duration::from_secs(2))?;
        Ok(s.into())
    })?
}

fn connect_in6(ns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    ns.run(|| {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.connect_timeout(&to.into(), Duration::from_secs(2))?;
        Ok(s.into())
    })?
}

/// errno EPERM: what a cgroup connect program's refusal looks like to the app.
const EPERM: i32 = 1;

fn listen_in(ns: &Netns, at: &str) -> TcpListener {
    ns.run(|| TcpListener::bind(at))
        .expect("setns")
        .expect("bind")
}

/// Accepts one connection within two seconds (never blocks a failing test forever).
fn accept_within(l: &TcpListener) -> Option<TcpStream> {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Ok((s, _)) = l.accept() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Two namespaces joined by a veth: client 10.N.0.1, pod 10.N.0.2 (`tag`
/// makes the interface names unique per test).
fn joined_pair(client: &str, pod: &str, tag: &str, n: u8) -> (TestNetns, TestNetns) {
    let (c, p) = (TestNetns::new(client), TestNetns::new(pod));
    let id = std::process::id() % 100000;
    let (veth_c, veth_p) = (format!("{tag}c{id}"), format!("{tag}p{id}"));
    ambit_e2e::netns::ip(&[
        "link",
        "add",
        &veth_c,
        "netns",
        c.name(),
        "type",
        "veth",
        "peer",
        "name",
        &veth_p,
        "netns",
        p.name(),
    ]);
    for (ns, dev, host) in [(&c, &veth_c, 1), (&p, &veth_p, 2)] {
        let addr = format!("10.{n}.0.{host}/24");
        ip_in(ns.name(), &["addr", "add", &addr, "dev", dev]);
        ip_in(ns.name(), &["link", "set", dev, "up"]);
    }
    (c, p)
}

#[test]
fn outbound_redirect_and_original_destination() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pod = TestNetns::new("pod");
    ip_in(pod.name(), &["addr", "add", "10.77.0.2/24", "dev", "lo"]);
    let ns = pod.open();
    let cookie = ns.cookie().expect("cookie");
    let mut capture =
        Capture::load(None).expect("load capture (needs root and a BPF-capable kernel)");

    let ztunnel_out = listen_in(&ns, "127.0.0.1:15001");
    let target: SocketAddr = "10.99.1.2:8080".parse().expect("addr");

    // Not enrolled: nothing listens at the target, so the connect fails.
    assert!(
        connect_in(&ns, target, None).is_err(),
        "un-enrolled connect is not redirected"
    );

    capture.enroll(cookie).expect("enroll");
    assert!(capture.is_enrolled(cookie).expect("lookup"));
    let app = connect_in(&ns, target, None).expect("redirected connect succeeds");
    let (_accepted, peer) = ztunnel_out.accept().expect("ztunnel accepts the app");
    assert_eq!(
        app.local_addr().expect("local"),
        peer,
        "ztunnel sees the app socket"
    );
    let SocketAddr::V4(peer4) = peer else {
        panic!("v4")
    };
    assert_eq!(
        capture.original_dst(cookie, peer4).expect("map"),
        Some(SocketAddrV4::new([10, 99, 1, 2].into(), 8080)),
        "original destination recorded for ztunnel"
    );
    drop(app);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        capture.original_dst(cookie, peer4).expect("map"),
        None,
        "entry removed on close"
    );

    // ztunnel's own marked sockets are never redirected.
    assert!(connect_in(&ns, target, Some(ZTUNNEL_MARK)).is_err());
    // Loopback and ztunnel ports are left alone.
    let direct = listen_in(&ns, "127.0.0.1:9999");
    connect_in(&ns, "127.0.0.1:9999".parse().expect("addr"), None).expect("loopback untouched");
    drop(direct);

    // IPv6 from an enrolled namespace is refused (no v6 capture yet: fail closed),
    // except loopback.
    ip_in(pod.name(), &["addr", "add", "fd00::2/64", "dev", "lo"]);
    let v6 = connect_in6(&ns, "[fd00::9]:8080".parse().expect("addr"));
    let err = v6.err().map(|e| e.raw_os_error());
    assert_eq!(err, Some(Some(EPERM)), "v6 refused with EPERM");
    let lo6 = listen_in(&ns, "[::1]:9998");
    connect_in6(&ns, "[::1]:9998".parse().expect("addr")).expect("::1 untouched");
    drop(lo6);

    // Released: back to plain behaviour, same process, same namespace.
    capture.release(cookie).expect("release");
    assert!(
        connect_in(&ns, target, None).is_err(),
        "released connect is not redirected"
    );
}

#[test]
fn inbound_plaintext_is_steered_into_15006_except_on_loopback() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two namespaces joined by a veth: client 10.78.0.1, pod 10.78.0.2.
    let (client, pod) = joined_pair("cli", "pod", "v", 78);
    let (cns, pns) = (client.open(), pod.open());
    let cookie = pns.cookie().expect("cookie");
    let mut capture = Capture::load(None).expect("load capture");

    let app = listen_in(&pns, "0.0.0.0:8080");
    let inbound_plain = listen_in(&pns, "127.0.0.1:15006");
    capture
        .attach_inbound(pns.as_fd(), cookie, [10, 78, 0, 2].into(), &inbound_plain)
        .expect("attach sk_lookup");

    // From outside: lands on 15006, with the original destination as local address.
    let _c = connect_in(&cns, "10.78.0.2:8080".parse().expect("addr"), None).expect("connect");
    let s = accept_within(&inbound_plain).expect("15006 accepts the outside connection");
    assert_eq!(
        s.local_addr().expect("local"),
        "10.78.0.2:8080".parse::<SocketAddr>().expect("addr")
    );

    // From inside the pod over loopback (ztunnel's upstream connect): reaches the app.
    let _l = connect_in(&pns, "10.78.0.2:8080".parse().expect("addr"), None).expect("connect");
    accept_within(&app).expect("app accepts the loopback connection");

    capture.release(cookie).expect("release");
    let _c2 = connect_in(&cns, "10.78.0.2:8080".parse().expect("addr"), None).expect("connect");
    accept_within(&app).expect("after release the app gets outside connections directly");
}

#[test]
fn socket_load_balancer_spreads_a_vip_for_unenrolled_pods() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pod = TestNetns::new("lb");
    ip_in(pod.name(), &["addr", "add", "10.79.0.2/24", "dev", "lo"]);
    ip_in(pod.name(), &["addr", "add", "10.79.0.3/24", "dev", "lo"]);
    let ns = pod.open();
    let mut capture = Capture::load(None).expect("load capture");
    let b1 = listen_in(&ns, "10.79.0.2:8080");
    let b2 = listen_in(&ns, "10.79.0.3:8080");
    b1.set_nonblocking(true).expect("nb");
    b2.set_nonblocking(true).expect("nb");
    let vip = SocketAddrV4::new([10, 96, 7, 7].into(), 80);
    capture
        .set_service(
            vip,
            &[
                "10.79.0.2:8080".parse().expect("a"),
                "10.79.0.3:8080".parse().expect("b"),
            ],
        )
        .expect("set service");
    // Only namespaces registered with the load balancer are balanced (the host
    // and other clusters on this machine are left alone).
    assert!(
        connect_in(&ns, SocketAddr::V4(vip), None).is_err(),
        "unregistered: untouched"
    );
    capture
        .balance_only(ns.cookie().expect("cookie"))
        .expect("register");
    let mut hits = [0u32; 2];
    let mut conns = Vec::new();
    for _ in 0..100 {
        let c = connect_in(&ns, SocketAddr::V4(vip), None).expect("VIP connect");
        let to = c.peer_addr().expect("peer");
        hits[if to.ip() == std::net::IpAddr::from([10, 79, 0, 2]) {
            0
        } else {
            1
        }] += 1;
        conns.push(c);
    }
    assert!(
        hits[0] >= 30 && hits[1] >= 30,
        "both backends used: {hits:?}"
    );
    capture.remove_service(vip).expect("remove");
    assert!(
        connect_in(&ns, SocketAddr::V4(vip), None).is_err(),
        "VIP gone"
    );
}

/// Removes a pin directory when the test ends, passed or not.
struct PinsGuard(std::path::PathBuf);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = ambit_ebpf::pins::remove(&self.0);
    }
}

#[test]
fn pinned_capture_outlives_its_process_and_fails_closed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (client, pod) = joined_pair("pcl", "ppd", "q", 81);
    let (cns, pns) = (client.open(), pod.open());
    let cookie = pns.cookie().expect("cookie");
    let dir = std::path::PathBuf::from(format!(
        "{}/test-{}",
        ambit_ebpf::pins::PIN_ROOT,
        std::process::id()
    ));
    let _pins = PinsGuard(dir.clone());
    let pod_app: SocketAddr = "10.81.0.2:8080".parse().expect("addr");
    let outside: SocketAddr = "10.81.0.1:9090".parse().expect("addr");
    let app = listen_in(&pns, "0.0.0.0:8080");
    let outside_server = listen_in(&cns, "10.81.0.1:9090");

    // A ztunnel: capture pinned, pod enrolled, inbound steered.
    let mut capture = Capture::load_pinned(None, &dir).expect("load pinned capture");
    assert!(!capture.reused_pins(), "fresh pin directory");
    assert_eq!(capture.pinned_cgroup_links(), 3);
    let plain = listen_in(&pns, "127.0.0.1:15006");
    capture
        .attach_inbound(pns.as_fd(), cookie, [10, 81, 0, 2].into(), &plain)
        .expect("attach sk_lookup");
    capture.enroll(cookie).expect("enroll");
    assert!(capture.pinned_links_run_own_programs().expect("link info"));

    // The process dies: every fd it held closes, its listeners are gone.
    drop(plain);
    drop(capture);

    // Outbound still redirected to the absent 15001: refused, never sent direct.
    assert!(
        connect_in(&pns, outside, None).is_err(),
        "an enrolled pod's connect fails while ztunnel is gone"
    );
    assert!(
        accept_within(&outside_server).is_none(),
        "nothing reached the destination in clear"
    );
    // Inbound plaintext is dropped rather than delivered to the app.
    let _ = connect_in(&cns, pod_app, None);
    assert!(
        accept_within(&app).is_none(),
        "the app got no plaintext connection while ztunnel was gone"
    );

    // The next ztunnel picks the pins up and serves again.
    let mut capture = Capture::load_pinned(None, &dir).expect("reload pinned capture");
    assert!(capture.reused_pins(), "programs found attached");
    assert!(
        capture.is_enrolled(cookie).expect("lookup"),
        "enrolment kept"
    );
    let out = listen_in(&pns, "127.0.0.1:15001");
    let plain = listen_in(&pns, "127.0.0.1:15006");
    capture
        .attach_inbound(pns.as_fd(), cookie, [10, 81, 0, 2].into(), &plain)
        .expect("re-attach sk_lookup");
    // An upgrade brings its programs: the links the first ztunnel pinned
    // stayed attached and now run the programs this one loaded.
    assert!(
        capture.pinned_links_run_own_programs().expect("link info"),
        "pinned links run the reloaded programs"
    );
    let _c = connect_in(&pns, outside, None).expect("redirected again");
    assert!(
        accept_within(&out).is_some(),
        "15001 gets the app's connect"
    );
    let _i = connect_in(&cns, pod_app, None).expect("inbound connect");
    assert!(
        accept_within(&plain).is_some(),
        "15006 gets inbound plaintext"
    );
    // Nothing stale to prune: the pod is still enrolled.
    let keep = std::collections::HashSet::from([cookie]);
    assert_eq!(capture.prune(&keep).expect("prune"), 0);
    // A pod that went away while ztunnel was down is pruned.
    assert_eq!(capture.prune(&Default::default()).expect("prune"), 1);
    assert!(!capture.is_enrolled(cookie).expect("lookup"));
    drop(capture);

    // Uninstall: pins removed, everything detaches.
    ambit_ebpf::pins::remove(&dir).expect("remove pins");
    let _d = connect_in(&pns, outside, None).expect("un-captured connect goes direct");
    assert!(accept_within(&outside_server).is_some());
}

/// A loader child that fails, or exits without reporting, is an error naming
/// the executable (ztunnel then refuses to start rather than run uncaptured);
/// the success path is every ztunnel process in `cli/tests/lifecycle.rs`.
#[test]
fn a_loader_child_that_fails_or_reports_nothing_is_an_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::PathBuf::from(format!(
        "{}/test-loader-{}",
        ambit_ebpf::pins::PIN_ROOT,
        std::process::id()
    ));
    let _pins = PinsGuard(dir.clone());
    for (exe, says) in [
        ("/bin/false", "exit status: 1"),
        ("/bin/true", "without a verdict"),
        ("/nonexistent/loader", "starting it"),
    ] {
        let err = Capture::load_with_options(ambit_ebpf::CaptureOptions {
            pin_dir: Some(&dir),
            loader: Some(std::path::Path::new(exe)),
            ..Default::default()
        })
        .expect_err("a loader that did not load is an error");
        let text = err.to_string();
        assert!(text.contains(exe) && text.contains(says), "{exe}: {text}");
    }
    assert!(!dir.join("links/connect4").exists(), "nothing was attached");
}

/// Creates map `name` pinned at `path` with bpftool (key and value sizes,
/// entries), as an earlier build with another layout would have left it.
fn bpftool_map(path: &std::path::Path, name: &str, key: u32, value: u32, entries: u32) {
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(["type", "hash", "key", &key, "value", &value])
        .args(["entries", &entries, "name", name])
        .status()
        .expect("this test needs bpftool (apt-get install bpftool)");
    assert!(created.success(), "bpftool map create {name}");
}

/// A map pinned by a build with another layout is replaced on load, not
/// reused (reused, this build's programs would read and write it with the
/// wrong sizes); when only its capacity changed, its entries are carried
/// over before the new programs run, so enrolled pods stay captured.
#[test]
fn a_pinned_map_of_another_layout_is_replaced_not_reused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No namespace has these cookies: enrolling them redirects nothing.
    let (kept, fresh) = (u64::MAX - 7, u64::MAX - 8);
    for (case, value_size, entries) in [("values", 8, 4096), ("capacity", 4, 16)] {
        let dir = std::path::PathBuf::from(format!(
            "{}/test-layout-{case}-{}",
            ambit_ebpf::pins::PIN_ROOT,
            std::process::id()
        ));
        let _pins = PinsGuard(dir.clone());
        ambit_ebpf::pins::PinDir::prepare(&dir).expect("pin directory");
        let enrolled = dir.join("maps/enrolled");
        bpftool_map(&enrolled, "enrolled", 8, value_size, entries);
        if value_size == 4 {
            // `kept` enrolled (MODE_CAPTURE = 1) by the earlier build.
            let mut key: Vec<String> = kept.to_le_bytes().iter().map(|b| b.to_string()).collect();
            key.insert(0, "key".into());
            let status = std::process::Command::new("bpftool")
                .args(["map", "update", "pinned"])
                .arg(&enrolled)
                .args(&key)
                .args(["value", "1", "0", "0", "0"])
                .status()
                .expect("bpftool map update");
            assert!(status.success(), "bpftool map update");
        }

        let mut capture = Capture::load_pinned(None, &dir).expect("load over the stale map");
        capture
            .enroll(fresh)
            .unwrap_or_else(|e| panic!("{case}: the new map has this build's layout: {e}"));
        assert!(capture.is_enrolled(fresh).expect("lookup"));
        assert_eq!(
            capture.is_enrolled(kept).expect("lookup"),
            value_size == 4,
            "{case}: entries carried over exactly when keys and values kept their sizes"
        );
        for cookie in [kept, fresh] {
            capture.release(cookie).expect("release");
        }
    }
}
