//! The images as a node runs them: `deploy/images.sh` builds the four OCI
//! layouts (twice, to show the digests are reproducible), then podman with
//! crun runs the controller, node-agent and ztunnel images together in a
//! network namespace of the test's own, against an API server the test
//! serves there, and the test waits for ztunnel's `/healthz/ready`: the
//! controller signed its certificate and pushed its config, the node agent
//! installed `ambit-cni` into the node's CNI config and serves ZDS. Needs
//! root (podman, bpffs); everything it creates is removed even when it
//! fails.

#[path = "../../controller/tests/common/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ambit_e2e::netns::{TestNetns, require_root};
use serde_json::json;

/// The test's scratch directory, podman storage and pinned capture: removed
/// on drop, after every container it started.
struct Scratch {
    dir: PathBuf,
    pins: PathBuf,
    cgroup: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("ambit-images-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        let cgroup_root = ambit_ebpf::cgroup2_root().expect("cgroup v2");
        let cgroup = cgroup_root.join(format!("ambit-images-{id}"));
        std::fs::create_dir_all(&cgroup).expect("test cgroup");
        Scratch {
            dir,
            pins: PathBuf::from(format!("/sys/fs/bpf/ambit-images-{id}")),
            cgroup,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = self.dir.join(p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// Runs podman (storage in the scratch dir) in a private mount
    /// namespace in which the host's cgroup-v2 mount is hidden: crun
    /// refuses a hybrid cgroup layout, and containers here run without
    /// cgroups of their own. The cgroup-v2 tree stays reachable at
    /// `/run/ambit-images-cgroup2` for the ztunnel container.
    fn podman(&self, args: &[&str]) -> Output {
        let root = self.path("podman/root");
        let runroot = self.path("podman/run");
        let script = r#"
            cg2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
            mkdir -p /run/ambit-images-cgroup2
            mount --bind "$cg2" /run/ambit-images-cgroup2
            if [ "$cg2" != /sys/fs/cgroup ]; then umount -l "$cg2"; fi
            exec "$@"
        "#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ]);
        cmd.args(["podman", "--root"]).arg(&root);
        cmd.arg("--runroot").arg(&runroot);
        cmd.args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--runtime",
            "crun",
        ]);
        cmd.args(args);
        cmd.output().expect("run podman")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--force", "--all", "--time", "2"]);
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir("/run/ambit-images-cgroup2");
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Builds the layouts into `out`: name → (digest, `layout:tag`).
fn build_images(out: &Path) -> BTreeMap<String, (String, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = Command::new("bash")
        .arg(repo.join("deploy/images.sh"))
        .env("PROFILE", "image-test")
        .env("OUT", out)
        .output()
        .expect("run deploy/images.sh");
    assert!(o.status.success(), "deploy/images.sh failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                (f.next()?.to_string(), f.next()?.to_string()),
            ))
        })
        .collect()
}

fn require_tools() {
    for tool in ["podman", "crun", "umoci", "unshare"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: run `bash .ci/deps` (it installs podman, crun and umoci)"
        );
    }
}

/// Waits until `f` holds, showing the containers' logs if it never does.
async fn until<F, Fut>(scratch: &Scratch, what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        if tokio::time::Instant::now() > deadline {
            let mut logs = String::new();
            for c in ["controller", "node-agent", "ztunnel"] {
                logs += &format!("--- {c}\n{}\n", text(&scratch.podman(&["logs", c])));
            }
            panic!("timed out: {what}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An HTTP GET to `127.0.0.1:port` inside `ns`: the status code.
async fn http_status(ns: &TestNetns, port: u16, path: &str) -> Option<u16> {
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let reply = ambit_cluster::client::http_get(ns.name(), to, path)
        .await
        .ok()??;
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_reproducible_and_run_under_podman() {
    require_root();
    require_tools();
    let scratch = Scratch::new();
    let images = build_images(&scratch.path("oci-a"));
    assert_eq!(
        images.keys().map(String::as_str).collect::<Vec<_>>(),
        ["controller", "node-agent", "waypoint", "ztunnel"]
    );
    let again = build_images(&scratch.path("oci-b"));
    for (name, (digest, _)) in &images {
        assert_eq!(
            Some(digest),
            again.get(name).map(|(d, _)| d),
            "{name}: same sources, same digest"
        );
    }
    let image = |name: &str| format!("oci:{}", images[name].1);

    // The node: a namespace of the test's own, loopback only.
    let ns = TestNetns::new("img");
    let network = format!("ns:/run/netns/{}", ns.name());
    // The API server the node agent follows (no pods yet).
    let api_listener = ns
        .open()
        .run(|| std::net::TcpListener::bind("127.0.0.1:6443"))
        .expect("enter netns")
        .expect("bind API");
    api_listener.set_nonblocking(true).expect("nonblocking");
    let api = fake_api::FakeApi::serve(
        tokio::net::TcpListener::from_std(api_listener).expect("tokio listener"),
    );
    api.insert(
        "/api/v1",
        "namespaces",
        json!({"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    let kube = scratch.path("kube");
    // In a cluster the client trusts the service account's ca.crt; here it
    // is given one too (the image has no CA bundle to fall back on).
    let cluster_ca = ambit_hbone::ca::Authority::new_root(
        "cluster.local",
        "test cluster CA",
        ambit_hbone::ca::Validity::starting_now(Duration::from_secs(3600)),
    )
    .expect("CA");
    api.kubeconfig_with_ca(&kube, Some(&cluster_ca.certificate_pem()));

    // Directories the containers share with the "node".
    let config = scratch.path("config");
    std::fs::write(
        config.join("demo.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .expect("config");
    let tokens = scratch.path("tokens");
    let zds = scratch.path("zds");
    let net_d = scratch.path("cni/net.d");
    let cni_bin = scratch.path("cni/bin");
    std::fs::write(
        net_d.join("10-node.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "node", "plugins": [{"type": "bridge", "bridge": "cni0"}]}"#,
    )
    .expect("primary CNI config");
    for d in [&tokens, &zds] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    }
    let vol = |host: &Path, at: &str| format!("{}:{at}", host.display());
    let common = [
        "run",
        "--detach",
        "--cgroups",
        "disabled",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        &network,
    ];

    // The controller: its image's user (1337), directory mode.
    let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--name".into(),
            "controller".into(),
            "-v".into(),
            vol(&config, "/config:ro"),
            "-v".into(),
            vol(&tokens, "/tokens"),
            image("controller"),
            "--dir".into(),
            "/config".into(),
            "--listen".into(),
            "127.0.0.1:15012".into(),
            "--metrics".into(),
            "127.0.0.1:15014".into(),
            "--token-dir".into(),
            "/tokens".into(),
            "--ca-dir".into(),
            "/tokens/ca".into(),
            "--nodes".into(),
            "node1".into(),
        ]
        .into_iter(),
    );
    let o = scratch.podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "podman run controller:\n{}", text(&o));
    until(
        &scratch,
        "controller metrics",
        Duration::from_secs(30),
        || async { http_status(&ns, 15014, "/metrics").await == Some(200) },
    )
    .await;

    // The node agent: installs the plugin, serves ZDS, follows the API.
    let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--name".into(),
            "node-agent".into(),
            "-e".into(),
            "NODE_NAME=node1".into(),
            "-e".into(),
            "KUBECONFIG=/kube/kubeconfig".into(),
            "-e".into(),
            "AMBIT_CNI_SOCKET=/var/run/ztunnel/cni.sock".into(),
            "-v".into(),
            vol(&kube, "/kube:ro"),
            "-v".into(),
            vol(&zds, "/var/run/ztunnel"),
            "-v".into(),
            vol(&net_d, "/host/etc/cni/net.d"),
            "-v".into(),
            vol(&cni_bin, "/host/opt/cni/bin"),
            image("node-agent"),
        ]
        .into_iter(),
    );
    let o = scratch.podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "podman run node-agent:\n{}", text(&o));

    // ztunnel: capture loaded into a cgroup of the test's own, pinned in a
    // bpffs directory of its own.
    let cgroup_rel = scratch
        .cgroup
        .strip_prefix(ambit_ebpf::cgroup2_root().expect("cgroup2"))
        .expect("under the root")
        .to_path_buf();
    let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--name".into(),
            "ztunnel".into(),
            "--privileged".into(),
            "-e".into(),
            "XDS_ADDRESS=https://127.0.0.1:15012".into(),
            "-e".into(),
            "ALT_XDS_HOSTNAME=localhost".into(),
            "-e".into(),
            "XDS_ROOT_CA=/tokens/root-cert.pem".into(),
            "-e".into(),
            "AUTH_TOKEN=/tokens/node1.token".into(),
            "-e".into(),
            "NODE_NAME=node1".into(),
            "-e".into(),
            "INPOD_UDS=/var/run/ztunnel/ztunnel.sock".into(),
            "-e".into(),
            format!("AMBIT_BPF_PIN_DIR={}", scratch.pins.display()),
            "-e".into(),
            format!("AMBIT_CGROUP_ROOT=/ambit-cgroup2/{}", cgroup_rel.display()),
            "-v".into(),
            vol(&tokens, "/tokens:ro"),
            "-v".into(),
            vol(&zds, "/var/run/ztunnel"),
            "-v".into(),
            "/sys/fs/bpf:/sys/fs/bpf".into(),
            "-v".into(),
            "/run/ambit-images-cgroup2:/ambit-cgroup2".into(),
            image("ztunnel"),
        ]
        .into_iter(),
    );
    let o = scratch.podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "podman run ztunnel:\n{}", text(&o));

    until(
        &scratch,
        "ztunnel ready",
        Duration::from_secs(60),
        || async { http_status(&ns, 15021, "/healthz/ready").await == Some(200) },
    )
    .await;
    // The node agent chained ambit-cni into the node's config and put the
    // plugin where the runtime looks for it.
    let conflist = std::fs::read_to_string(net_d.join("10-node.conflist")).expect("conflist");
    assert!(conflist.contains("ambit-cni"), "{conflist}");
    assert!(cni_bin.join("ambit-cni").is_file());
    // It listed the pods it follows from the API server: its node's only.
    assert!(
        api.requests().iter().any(|r| r.path == "/api/v1/pods"
            && !r.query.contains("watch=true")
            && r.query.contains("fieldSelector=spec.nodeName%3Dnode1")),
        "{:?}",
        api.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/pods")
            .map(|r| r.query.clone())
            .collect::<Vec<_>>()
    );
}
