//! Controller scale benchmark: N pods, M services, C connected xDS clients.
//!
//! Prints one line of `key=value` results (see `benches/controller.sh`, which
//! pins it to one vCPU, runs 3 rounds and prints medians with min–max):
//! * `full_push_ms`: from the clients starting to connect until every client
//!   holds every resource (and has ACKed it);
//! * `change_p50_ms` / `change_p99_ms`: one pod's label changed in the source
//!   until every client received it, over `--changes` changes; each change
//!   must arrive as exactly one resource;
//! * `rss_model_mib` (controller with the model built, no clients) and
//!   `rss_mib` (with every client connected; the clients share the process but
//!   keep only counters).

// tonic's interceptor signature returns `Status`.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambit_api::k8s::Resources;
use ambit_api::xds::proto::discovery::DeltaDiscoveryRequest;
use ambit_api::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use ambit_hbone::ca::{Authority, Validity};
use clap::Parser;
use controller::auth::BootstrapTokens;
use controller::source::MemorySource;
use controller::{Controller, ControllerConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Internal: run only the clients, against this address, in this process.
    #[arg(long, hide = true)]
    clients_of: Option<String>,
    /// Internal: the clients' bearer token.
    #[arg(long, hide = true, default_value = "")]
    token: String,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The world after `changed` changes: pods 1..=changed carry `version: v1`,
/// so change i touches pod i only.
fn world(pods: usize, services: usize, changed: usize) -> Resources {
    let mut y = String::new();
    let namespaces = 10;
    for n in 0..namespaces {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
        ));
    }
    for s in 0..services {
        let n = s % namespaces;
        y.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: ns{n}}}\n\
             spec: {{clusterIP: 10.96.{}.{}, selector: {{app: svc{s}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n",
            s / 250,
            s % 250 + 1
        ));
    }
    for p in 0..pods {
        let s = p % services;
        let n = s % namespaces;
        let rev = usize::from(p >= 1 && p <= changed);
        y.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod{p}, namespace: ns{n}, labels: {{app: svc{s}, version: v{rev}}}}}\n\
             spec: {{nodeName: node{}, serviceAccountName: sa{s}, containers: [{{name: c, image: x}}]}}\n\
             status: {{podIP: 10.{}.{}.{}}}\n---\n",
            p % 100,
            100 + p / 65_000,
            (p / 250) % 256,
            p % 250 + 2
        ));
    }
    let mut r = Resources::default();
    r.add_yaml(&y, "scale.yaml").expect("generated yaml");
    r
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What the parent knows of one client (reported by the client process).
struct ClientStats {
    held: AtomicUsize,
    last_single_update: AtomicU64,
    updates: AtomicUsize,
}

/// One xDS client in the client process: reports `H <i>` once it holds
/// everything and `U <i> <unix µs>` for every single-resource update.
async fn client(
    addr: String,
    token: String,
    want: usize,
    id: usize,
    out: mpsc::UnboundedSender<String>,
) {
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let bearer: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {token}").parse().expect("token");
    let mut c = AggregatedDiscoveryServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    )
    .max_decoding_message_size(200 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    for t in [ADDRESS_TYPE, AUTHORIZATION_TYPE] {
        tx.send(DeltaDiscoveryRequest {
            type_url: t.into(),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let mut stream = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut held = 0;
    while let Ok(Some(resp)) = stream.message().await {
        if resp.type_url == ADDRESS_TYPE {
            if held >= want && resp.resources.len() == 1 {
                let _ = out.send(format!("U {id} {}", unix_us()));
            } else {
                held += resp.resources.len();
                if held >= want {
                    let _ = out.send(format!("H {id}"));
                }
            }
        }
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                ..Default::default()
            })
            .await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    if let Some(addr) = &args.clients_of {
        let want = args.pods + args.services;
        let (tx, mut rx) = mpsc::unbounded_channel();
        for id in 0..args.clients {
            tokio::spawn(client(
                addr.clone(),
                args.token.clone(),
                want,
                id,
                tx.clone(),
            ));
        }
        drop(tx);
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
        }
        return Ok(());
    }
    anyhow::ensure!(args.changes < args.pods, "--changes must be below --pods");
    let initial = world(args.pods, args.services, 0);
    let want = args.pods + args.services;
    let (source, publish) = MemorySource::new(initial);
    let root = Authority::new_root(
        "cluster.local",
        "bench",
        Validity::starting_now(Duration::from_secs(3600)),
    )?;
    let tokens = BootstrapTokens::default();
    let token = tokens.mint("node0");
    let built = Instant::now();
    let ctl = Controller::start(
        ControllerConfig {
            listen: "127.0.0.1:0".parse()?,
            tls: None,
            signer: Arc::new(root),
            auth: Arc::new(tokens),
            debounce: Duration::from_millis(1),
            metrics: None,
        },
        Box::new(source),
    )
    .await?;
    let model_ms = built.elapsed().as_secs_f64() * 1000.0;
    let rss_model = rss_mib();
    let addr = format!("http://{}", ctl.local_addr());

    let stats: Arc<Vec<ClientStats>> = Arc::new(
        (0..args.clients)
            .map(|_| ClientStats {
                held: AtomicUsize::new(0),
                last_single_update: AtomicU64::new(0),
                updates: AtomicUsize::new(0),
            })
            .collect(),
    );
    // The clients run in a child process, so the RSS measured here is the
    // controller's alone.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--clients-of", &addr, "--token", &token])
        .args([
            "--pods",
            &args.pods.to_string(),
            "--services",
            &args.services.to_string(),
        ])
        .args(["--clients", &args.clients.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let child_out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no child stdout"))?;
    let reader_stats = stats.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(child_out)
            .lines()
            .map_while(Result::ok)
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let Some(s) = parts
                .get(1)
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| reader_stats.get(i))
            else {
                continue;
            };
            match parts.first() {
                Some(&"H") => s.held.store(want, Ordering::Relaxed),
                Some(&"U") => {
                    let t = parts.get(2).and_then(|t| t.parse().ok()).unwrap_or(0);
                    s.last_single_update.store(t, Ordering::Relaxed);
                    s.updates.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    let start = Instant::now();
    while stats.iter().any(|s| s.held.load(Ordering::Relaxed) < want) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if start.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("clients did not receive the full push within 300 s");
        }
    }
    let full_push_ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss = rss_mib();

    let mut latencies = Vec::new();
    for i in 1..=args.changes {
        let next = world(args.pods, args.services, i);
        let before: Vec<usize> = stats
            .iter()
            .map(|s| s.updates.load(Ordering::Relaxed))
            .collect();
        let t0 = unix_us();
        publish.send_replace(next);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats
            .iter()
            .zip(&before)
            .any(|(s, b)| s.updates.load(Ordering::Relaxed) <= *b)
        {
            if Instant::now() > deadline {
                anyhow::bail!("change {i} did not reach every client as one resource");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let last = stats
            .iter()
            .map(|s| s.last_single_update.load(Ordering::Relaxed))
            .max()
            .unwrap_or(t0);
        latencies.push((last.saturating_sub(t0)) as f64 / 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "pods={} services={} clients={} model_build_ms={model_ms:.1} full_push_ms={full_push_ms:.1} change_p50_ms={:.2} change_p99_ms={:.2} rss_model_mib={rss_model:.1} rss_mib={rss:.1} resources_sent={}",
        args.pods,
        args.services,
        args.clients,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        ctl.stats().resources_sent.load(Ordering::Relaxed)
    );
    let _ = child.kill();
    let _ = child.wait();
    ctl.stop().await;
    Ok(())
}
