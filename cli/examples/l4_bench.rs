//! The L4 benchmark (issue: zero copy, lifecycle, L4 benchmark): direct TCP
//! between two pod namespaces on different nodes vs the same traffic through
//! both nodes' ztunnels (HBONE, mTLS), in one local cluster. Tools run inside
//! the pod namespaces: iperf3 (1 and 4 streams), sockperf (64 B TCP
//! ping-pong), wrk against `ambit echo` (keep-alive 1 and 64 connections, a
//! new connection per request, 1,000 connections at ≈2,000 req/s).
//!
//! Each node's ztunnel is its own process (`ambit ztunnel`, as the DaemonSet
//! runs it), so CPU and memory are the ztunnels' own: CPU per request / per
//! new connection / ns per byte from both ztunnels' `/proc/PID/stat` deltas,
//! each ztunnel's VmRSS idle and with 1,000 idle tunnelled connections, and
//! VmHWM at the end. Prints one
//! `key=value` line per round; `benches/l4.sh` pins everything to one vCPU,
//! runs 3 rounds and prints the table. Needs root.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::client::{connect_from, wait_listening};
use ambit_cluster::{LocalCluster, UpOptions};
use anyhow::{Context, bail};

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: direct}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: mesh}
spec: {nodeName: node2, serviceAccountName: server, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: direct}
spec: {nodeName: node1, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: direct}
spec: {nodeName: node2, containers: [{name: c, image: ambit}]}
"#;

const SECONDS: u32 = 4;

/// The ztunnel processes, node1 first.
static ZTUNNELS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// CPU seconds (user + system) process `pid` has used.
fn pid_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = 100.0; // USER_HZ on Linux
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(11) + get(12)) / tick
}

/// CPU seconds both ztunnels have used.
fn cpu_seconds() -> f64 {
    ZTUNNELS
        .get()
        .into_iter()
        .flatten()
        .map(|p| pid_cpu_seconds(*p))
        .sum()
}

/// A `/proc/PID/status` value in KiB (VmRSS, VmHWM) of node `n`'s ztunnel.
fn status_kib(n: usize, key: &str) -> f64 {
    let Some(pid) = ZTUNNELS.get().and_then(|z| z.get(n - 1)) else {
        return f64::NAN;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs `argv` inside `/run/netns/<netns>`; returns stdout.
fn run_in(netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .with_context(|| format!("running {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a server inside `netns` (killed with the returned child).
fn serve_in(netns: &str, argv: &[&str]) -> anyhow::Result<std::process::Child> {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {argv:?}"))
}

/// iperf3 throughput (Gbit/s) and both ztunnels' CPU ns per byte; one retry,
/// since iperf3 now and then reports an error instead of a result (server
/// still busy with the previous test).
fn iperf_gbps(netns: &str, server: &str, streams: u32) -> anyhow::Result<(f64, f64)> {
    iperf_once(netns, server, streams).or_else(|e| {
        eprintln!("iperf3 failed ({e:#}); retrying once");
        std::thread::sleep(Duration::from_secs(1));
        iperf_once(netns, server, streams)
    })
}

fn iperf_once(netns: &str, server: &str, streams: u32) -> anyhow::Result<(f64, f64)> {
    let cpu0 = cpu_seconds();
    let out = run_in(
        netns,
        &[
            "iperf3",
            "-c",
            server,
            "-t",
            &SECONDS.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )?;
    let cpu = cpu_seconds() - cpu0;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let end = &v["end"]["sum_received"];
    let bps = end["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no bits_per_second: {}", v["error"]))?;
    let bytes = end["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e9, if bytes > 0.0 { cpu * 1e9 / bytes } else { 0.0 }))
}

fn sockperf_us(netns: &str, server: &str) -> anyhow::Result<(f64, f64)> {
    let out = run_in(
        netns,
        &[
            "sockperf",
            "ping-pong",
            "--tcp",
            "-i",
            server,
            "-p",
            "11111",
            "-m",
            "64",
            "-t",
            &SECONDS.to_string(),
        ],
    )?;
    let pct = |p: &str| -> f64 {
        out.lines()
            .find(|l| l.contains(&format!("percentile {p}")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((pct("50.000"), pct("99.000")))
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    cpu_s: f64,
}

fn wrk(netns: &str, url: &str, conns: u32, extra: &[&str]) -> anyhow::Result<Wrk> {
    let c = format!("-c{conns}");
    let d = format!("-d{SECONDS}s");
    let mut argv = vec!["wrk", "-t1", &c, &d, "--latency"];
    argv.extend_from_slice(extra);
    argv.push(url);
    let cpu0 = cpu_seconds();
    let out = run_in(netns, &argv)?;
    let cpu_s = cpu_seconds() - cpu0;
    let num = |re: &str| -> f64 {
        regex::Regex::new(re)
            .ok()
            .and_then(|r| r.captures(&out))
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let lat = |p: &str| -> f64 {
        let Some(c) = regex::Regex::new(&format!(r"\s{p}%\s+([\d.]+)(us|ms|s)\b"))
            .ok()
            .and_then(|r| r.captures(&out))
        else {
            return f64::NAN;
        };
        let v: f64 = c[1].parse().unwrap_or(f64::NAN);
        v * match &c[2] {
            "us" => 0.001,
            "s" => 1000.0,
            _ => 1.0,
        }
    };
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        eprintln!("wrk reported errors:\n{out}");
    }
    Ok(Wrk {
        rps: num(r"Requests/sec:\s+([\d.]+)"),
        p50_ms: lat("50"),
        p99_ms: lat("99"),
        requests: num(r"(\d+) requests in"),
        cpu_s,
    })
}

/// Churn: `rate` new connections per second through node1's ztunnel for
/// `secs`, each one HTTP request and close; prints RSS at start, middle and
/// end, and CPU per connection.
/// Opens `total` connections (one HTTP request each) at `rate` per second,
/// each on its own task; returns the failures and VmRSS of node1's ztunnel
/// half way through.
async fn at_rate(client: &str, target: SocketAddr, rate: u64, total: u64) -> (u64, f64) {
    let mut mid_rss = 0.0;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (client, failures) = (client.to_string(), failures.clone());
        tasks.spawn(async move {
            if one_request(&client, target).await.is_err() {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
        if i == total / 2 {
            mid_rss = status_kib(1, "VmRSS:") / 1024.0;
        }
    }
    while tasks.join_next().await.is_some() {}
    (failures.load(std::sync::atomic::Ordering::Relaxed), mid_rss)
}

/// The churn run: 10 s at `rate` to reach steady state (the connections in
/// flight at that rate, the allocator's working set), then `secs` more at
/// `rate`, sampling node1's ztunnel VmRSS at the start, middle and end of
/// those; also reports VmRSS before the warm-up ("cold").
async fn churn(cluster: &LocalCluster, rate: u64, secs: u64) -> anyhow::Result<()> {
    let client = cluster.pod("mesh/client")?.netns.clone();
    let target: SocketAddr = format!("{}:8080", cluster.pod("mesh/server")?.ip).parse()?;
    let rss = || status_kib(1, "VmRSS:") / 1024.0;
    let node1 = ZTUNNELS.get().and_then(|z| z.first().copied()).unwrap_or(0);
    // Pool, certificates, first code paths.
    for _ in 0..200 {
        one_request(&client, target).await?;
    }
    let cold_rss = rss();
    let (warm_failures, _) = at_rate(&client, target, rate, rate * 10).await;
    let start_rss = rss();
    let cpu0 = pid_cpu_seconds(node1);
    let total = rate * secs;
    let (failures, mid_rss) = at_rate(&client, target, rate, total).await;
    let cpu = pid_cpu_seconds(node1) - cpu0;
    let end_rss = rss();
    println!(
        "churn_conns={total} churn_secs={secs} churn_failures={} churn_rss_cold_mib={cold_rss:.2} churn_rss_start_mib={start_rss:.2} churn_rss_mid_mib={mid_rss:.2} churn_rss_end_mib={end_rss:.2} churn_rss_growth_pct={:.2} churn_cpu_us_per_conn={:.1}",
        failures + warm_failures,
        (end_rss - start_rss) * 100.0 / start_rss,
        cpu * 1e6 / total as f64
    );
    Ok(())
}

async fn one_request(netns: &str, to: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(netns, to).await?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("bad response");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `--churn SECS`: only the churn run (72,000 connections a minute).
    let churn_secs: Option<u64> = std::env::args()
        .skip_while(|a| a != "--churn")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let mut res = Resources::default();
    res.add_yaml(YAML, "l4-bench.yaml")?;
    // SAFETY: set before any pod process starts; nothing else reads it concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(
            "AMBIT_BIN",
            std::env::current_exe()?
                .parent()
                .and_then(|p| p.parent())
                .map(|p| p.join("ambit"))
                .context("target dir")?,
        )
    };
    let ambit = std::env::var("AMBIT_BIN")?;
    // The DaemonSet's binary: $AMBIT_ZTUNNEL_BIN (l4.sh builds it as the
    // image ships it: deploy/build-ztunnel.sh), else `ztunnel` next to `ambit`.
    let ztunnel_exe = match std::env::var_os("AMBIT_ZTUNNEL_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(&ambit).with_file_name("ztunnel"),
    };
    let opts = UpOptions {
        ztunnel_exe: Some(ztunnel_exe),
        ..UpOptions::default()
    };
    let mut cluster = LocalCluster::up_opts(res, 2, opts).await?;
    let pids: Vec<u32> = (1..=2)
        .filter_map(|n| cluster.ztunnel_process(n).and_then(|z| z.pid()))
        .collect();
    ZTUNNELS.set(pids.clone()).ok();
    // `--hold`: bring the cluster up, print where things are and wait for
    // Ctrl-C (to profile a ztunnel by hand: `perf record -p PID`).
    if std::env::args().any(|a| a == "--hold") {
        for (n, pid) in pids.iter().enumerate() {
            println!("node{} ztunnel pid {pid}", n + 1);
        }
        for (name, p) in &cluster.pods {
            println!("pod {name} ip {} netns {}", p.ip, p.netns);
        }
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let mut children = Vec::new();
    let mut out: Vec<(String, f64)> = Vec::new();
    let delay = std::env::temp_dir().join("ambit-l4-delay.lua");
    // 1,000 connections each waiting 500 ms between requests: ≈2,000 req/s.
    std::fs::write(&delay, "function delay() return 500 end\n")?;
    if let Some(secs) = churn_secs {
        let server = cluster.pod("mesh/server")?.netns.clone();
        let mut echo = serve_in(
            &server,
            &[&ambit, "echo", "--port", "8080", "--name", "server"],
        )?;
        if !wait_listening(&server, 8080, Duration::from_secs(10)).await {
            bail!("echo did not come up");
        }
        let r = churn(&cluster, 1200, secs).await;
        let _ = echo.kill();
        let _ = echo.wait();
        return r;
    }
    for mode in ["direct", "mesh"] {
        let client = cluster.pod(&format!("{mode}/client"))?.netns.clone();
        let server_pod = cluster.pod(&format!("{mode}/server"))?.clone();
        let server = server_pod.ip.to_string();
        children.push(serve_in(
            &server_pod.netns,
            &["iperf3", "-s", "-B", "0.0.0.0", "-p", "5201"],
        )?);
        children.push(serve_in(
            &server_pod.netns,
            &[
                "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111",
            ],
        )?);
        children.push(serve_in(
            &server_pod.netns,
            &[&ambit, "echo", "--port", "8080", "--name", "server"],
        )?);
        for port in [5201, 11111, 8080] {
            if !wait_listening(&server_pod.netns, port, Duration::from_secs(10)).await {
                bail!("{mode} server port {port} did not come up");
            }
        }
        let (g1, nspb) = iperf_gbps(&client, &server, 1)?;
        let (g4, _) = iperf_gbps(&client, &server, 4)?;
        let (rtt50, rtt99) = sockperf_us(&client, &server)?;
        let url = format!("http://{server}:8080/");
        let k1 = wrk(&client, &url, 1, &[])?;
        let k64 = wrk(&client, &url, 64, &[])?;
        let new = wrk(&client, &url, 1, &["-H", "Connection: close"])?;
        let fixed = wrk(
            &client,
            &url,
            1000,
            &["-s", delay.to_str().unwrap_or_default()],
        )?;
        let m = |k: &str| format!("{mode}_{k}");
        out.extend([
            (m("iperf1_gbps"), g1),
            (m("iperf4_gbps"), g4),
            (m("ns_per_byte"), nspb),
            (m("rtt_p50_us"), rtt50),
            (m("rtt_p99_us"), rtt99),
            (m("ka1_rps"), k1.rps),
            (m("ka1_p50_ms"), k1.p50_ms),
            (m("ka1_p99_ms"), k1.p99_ms),
            (m("ka64_rps"), k64.rps),
            (m("ka64_p50_ms"), k64.p50_ms),
            (m("ka64_p99_ms"), k64.p99_ms),
            (m("cpu_us_per_req"), k64.cpu_s * 1e6 / k64.requests.max(1.0)),
            (m("newconn_rps"), new.rps),
            (m("newconn_p50_ms"), new.p50_ms),
            (m("newconn_p99_ms"), new.p99_ms),
            (
                m("cpu_us_per_conn"),
                new.cpu_s * 1e6 / new.requests.max(1.0),
            ),
            (m("fixed_rps"), fixed.rps),
            (m("fixed_p50_ms"), fixed.p50_ms),
            (m("fixed_p99_ms"), fixed.p99_ms),
        ]);
        if mode == "mesh" {
            // Memory: idle (16 s after the last load: the pool has closed
            // the burst's extra HBONE connections, idle 10 s, swept every
            // 5 s; ztunnel hands freed heap back every 2 s), then with 1,000
            // idle tunnelled connections.
            tokio::time::sleep(Duration::from_secs(16)).await;
            for n in 1..=2 {
                out.push((format!("rss{n}_idle_mib"), status_kib(n, "VmRSS:") / 1024.0));
            }
            let target: SocketAddr = format!("{server}:8080").parse()?;
            let mut held = Vec::new();
            for _ in 0..1000 {
                held.push(connect_from(&client, target).await?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            for n in 1..=2 {
                out.push((
                    format!("rss{n}_1000_conns_mib"),
                    status_kib(n, "VmRSS:") / 1024.0,
                ));
            }
            drop(held);
            for n in 1..=2 {
                out.push((format!("hwm{n}_mib"), status_kib(n, "VmHWM:") / 1024.0));
            }
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(cluster);
    let line: Vec<String> = out.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
    println!("{}", line.join(" "));
    Ok(())
}
