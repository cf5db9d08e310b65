//! `ambit dashboard` in a real browser: Debian's Chromium, driven over
//! WebDriver (chromedriver), against a running `ambit up`. The test sends
//! traffic (allowed requests, requests the waypoint refuses, a connection
//! ztunnel refuses) and checks that the graph shows those edges with their
//! mTLS lock and refusals, that clicking a workload shows the L4 and L7
//! policies that apply to it, and that the config findings are listed. A
//! screenshot is written to `target/dashboard-test.png`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::up::Up;
use common::{exchange, require_root, status_of};
use serde_json::{Value, json};

const CLUSTER: &str = include_str!("fixtures/shop_waypoint.yaml");

/// A finding the dashboard must list (Telemetry metrics overrides are
/// reported, not applied).
const WITH_FINDING: &str = "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: metrics, namespace: shop}
spec:
  metrics: [{overrides: [{disabled: true}]}]
";

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One WebDriver call (HTTP/1.1 JSON over loopback).
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    // chromedriver keeps the connection open: read the head, then exactly
    // Content-Length bytes.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert!(
            n == 1,
            "{method} {path}: closed mid-head: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no content-length: {head}"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("read body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&body)))
}

/// The element a find returned (W3C's element key); `None` for an error
/// such as `no such element`.
fn element_id(reply: &Value) -> Option<String> {
    reply["value"]["element-6066-11e4-a52e-4f735466cecf"]
        .as_str()
        .map(str::to_string)
}

/// The browser session.
struct Browser {
    port: u16,
    session: String,
    _driver: Killed,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Killed(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian package chromium-driver; .ci/deps installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]
            }
        }}});
        let r = wd(port, "POST", "/session", Some(caps));
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            port,
            session,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// The element `css` selects, waiting up to 20 s for it.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            if let Some(id) = element_id(&r) {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css}; page text:\n{}",
                self.text_of_body()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn attribute(&self, element: &str, name: &str) -> String {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn text_of_body(&self) -> String {
        let r = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": "body"})),
        );
        element_id(&r).map(|id| self.text(&id)).unwrap_or_default()
    }

    /// Waits until the text of `css` contains `want`.
    fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(&self.find(css));
            if t.contains(want) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {want:?}: {t}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let r = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().unwrap_or_default())
            .expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            wd(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_shows_the_traffic_in_a_real_browser() {
    require_root();
    let up =
        tokio::task::block_in_place(|| Up::start("dashboard", &format!("{CLUSTER}{WITH_FINDING}")));
    let client = up.pod_field("shop/client", "netns");
    let web_ip = up.pod_field("shop/web-0", "ip");
    let vip: SocketAddr = "10.96.0.60:8080".parse().expect("vip");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    // Wait for the path to work, then send the traffic the graph must show.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&exchange(&client, vip, get("/ok").as_bytes()).await) != 200 {
        assert!(Instant::now() < deadline, "web never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let port = free_port();
    let _dashboard = Killed(
        Command::new(env!("CARGO_BIN_EXE_ambit"))
            .args([
                "dashboard",
                "--run",
                &up.run,
                "--address",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("ambit dashboard"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "dashboard did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its first scrape is the baseline the rates are measured from.
    let graph = tokio::task::block_in_place(|| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("dashboard");
        s.write_all(b"GET /api/graph HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        reply
    });
    assert_eq!(status_of(&graph), 200, "{graph}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for _ in 0..20 {
        assert_eq!(
            status_of(&exchange(&client, vip, get("/ok").as_bytes()).await),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            status_of(&exchange(&client, vip, get("/admin/x").as_bytes()).await),
            403
        );
    }
    let refused = exchange(
        &client,
        format!("{web_ip}:7000").parse().expect("addr"),
        b"hi\n",
    )
    .await;
    assert!(!refused.contains("saw"), "{refused}");

    tokio::task::block_in_place(|| {
        let b = Browser::start();
        b.open(&format!("http://127.0.0.1:{port}/"));
        // The allowed requests: an http edge through the waypoint, mTLS.
        let http = b.find(r#"[data-edge="shop/client->shop/web-0"][data-protocol="http"]"#);
        assert_eq!(b.attribute(&http, "data-mtls"), "true");
        let total: f64 = b.attribute(&http, "data-total").parse().unwrap_or_default();
        assert!(total >= 20.0, "{total}");
        assert!(b.text(&http).contains("mTLS"), "{}", b.text(&http));
        // Sent after the dashboard's first scrape: a rate above zero.
        let rate: f64 = b.attribute(&http, "data-rate").parse().unwrap_or_default();
        assert!(rate > 0.0, "rate {rate}: {}", b.text(&http));
        // The refused requests: to the Service, refused by policy.
        let denied = b.find(r#"[data-edge="shop/client->web.shop.svc.cluster.local"]"#);
        let n: f64 = b
            .attribute(&denied, "data-denied")
            .parse()
            .unwrap_or_default();
        assert!(n >= 3.0, "{n}");
        assert!(b.text(&denied).contains("denied"), "{}", b.text(&denied));
        // The refused connection: a tcp edge ztunnel denied.
        let tcp = b.find(r#"[data-edge="shop/client->shop/web-0"][data-protocol="tcp"]"#);
        assert!(
            b.attribute(&tcp, "data-denied")
                .parse::<f64>()
                .unwrap_or_default()
                >= 1.0
        );
        // A workload's detail: the policies that apply to it.
        let web = b.find(r#"[data-node="shop/web-0"] rect"#);
        b.call("POST", &format!("/element/{web}/click"), Some(json!({})));
        b.wait_text("#detail-id", "shop/web-0");
        b.wait_text("#l4-policies", "shop/no-7000");
        b.wait_text("#l7-policies", "shop/no-admin");
        // The config findings.
        b.wait_text("#findings", "spec.metrics");
        let shot =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-test.png");
        b.screenshot(&shot);
        println!("screenshot: {}", shot.display());
    });
    drop(up);
}
