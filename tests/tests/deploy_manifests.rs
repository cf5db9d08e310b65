//! `deploy/` checked against the Kubernetes OpenAPI schemas
//! (`kubernetes-validate --strict`, PyPI, installed by `.ci/deps`), plus the
//! properties the manifests promise: every file in the kustomization, least
//! privilege RBAC, a DaemonSet with what eBPF capture needs, and images
//! named by deploy/images.env.

use std::path::{Path, PathBuf};
use std::process::Command;

const KUBERNETES_VERSION: &str = "1.33.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("deploy/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    v.sort();
    v
}

/// Every manifest: deploy/*.yaml and deploy/crds/*.yaml.
fn manifests() -> Vec<PathBuf> {
    let mut v = yaml_files(&deploy_dir());
    v.extend(yaml_files(&deploy_dir().join("crds")));
    v
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate not runnable ({e}): `pip install kubernetes-validate` (.ci/deps does)")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let (ok, out) = validate(&files);
    assert!(ok, "schema validation failed:\n{out}");
    // The check can fail: a typo'd field is caught.
    let bad = std::env::temp_dir().join(format!("ambit-bad-ds-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("ds");
    std::fs::write(&bad, ds.replace("readinessProbe:", "readinesProbe:")).expect("write");
    let (ok, out) = validate(std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(
        !ok && out.contains("readinesProbe"),
        "a bad manifest must fail: {out}"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = &docs(&deploy_dir().join("kustomization.yaml"))[0];
    let listed: Vec<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    for f in manifests() {
        let name = f
            .strip_prefix(deploy_dir())
            .expect("under deploy/")
            .to_string_lossy()
            .into_owned();
        if name == "crds/istio.yaml" {
            // Opt-in: over Istio's own CRDs it would replace their schemas.
            assert!(!listed.contains(&name), "{name} must not be in the base");
            continue;
        }
        assert!(
            listed.contains(&name),
            "{name} missing from kustomization.yaml"
        );
    }
}

#[test]
fn rbac_is_least_privilege() {
    let rbac = docs(&deploy_dir().join("rbac.yaml"));
    let role = |name: &str| {
        rbac.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ClusterRole {name}"))
    };
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The waypoint deployer writes exactly the objects it renders, and
    // never updates (server-side apply only), reads secrets or touches pods.
    for rule in role("ambit-waypoint-deployer")["rules"]
        .as_sequence()
        .expect("rules")
    {
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        let allowed: &[&str] = if resources == ["gateways/status"] {
            &["patch"]
        } else {
            assert!(
                resources.iter().all(|r| [
                    "serviceaccounts",
                    "services",
                    "configmaps",
                    "deployments"
                ]
                .contains(&r.as_str())),
                "deployer writes only what it renders: {resources:?}"
            );
            &["get", "list", "create", "patch", "delete"]
        };
        assert!(
            verbs.iter().all(|v| allowed.contains(&v.as_str())),
            "{resources:?}: {verbs:?}"
        );
    }
    let cluster_role = role("ambit-controller");
    for rule in cluster_role["rules"].as_sequence().expect("rules") {
        let verbs: Vec<&str> = rule["verbs"]
            .as_sequence()
            .expect("verbs")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let resources: Vec<&str> = rule["resources"]
            .as_sequence()
            .expect("resources")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        if resources == ["tokenreviews"] {
            assert_eq!(verbs, ["create"]);
        } else {
            assert!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                "cluster-wide write on {resources:?}: {verbs:?}"
            );
        }
        assert!(
            !resources.contains(&"secrets"),
            "no cluster-wide secrets access"
        );
    }
    // ztunnel has no API access at all.
    assert!(
        !rbac
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
            .any(|b| b["subjects"][0]["name"] == "ztunnel"),
        "ztunnel must not be bound to any role"
    );
}

#[test]
fn daemonset_has_what_ebpf_capture_needs() {
    let ds = &docs(&deploy_dir().join("daemonset.yaml"))[0];
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("caps")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "missing {cap}");
    }
    let host_paths: Vec<&str> = spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in ["/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/ztunnel"] {
        assert!(host_paths.contains(&p), "missing hostPath {p}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_u64(), Some(15021));
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"], "none",
        "ztunnel itself is never captured"
    );
}

/// Every image the manifests run is one `deploy/images.sh` builds, named
/// and tagged as `deploy/images.env` says (the one place they are set).
#[test]
fn images_come_from_images_env() {
    use controller::images::reference;
    let expected = |key: &str| reference(key);
    let wanted = [
        ("daemonset.yaml", expected("ZTUNNEL")),
        ("controller.yaml", expected("CONTROLLER")),
        ("node-agent.yaml", expected("CNI")),
    ];
    for (file, image) in wanted {
        let found: Vec<String> = docs(&deploy_dir().join(file))
            .iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
            .flat_map(|d| {
                d["spec"]["template"]["spec"]["containers"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c["image"].as_str().map(String::from))
            .collect();
        assert_eq!(found, [image], "{file}");
    }
    // The waypoint image the controller deploys is the one images.sh builds.
    assert_eq!(controller::images::WAYPOINT.as_str(), expected("WAYPOINT"));
    let script = std::fs::read_to_string(deploy_dir().join("images.sh")).expect("images.sh");
    for key in ["ZTUNNEL", "CONTROLLER", "WAYPOINT", "CNI"] {
        assert!(
            script.contains(&format!("image \"${key}\"")),
            "images.sh builds {key}"
        );
    }
}

fn install_args(set: &[&str]) -> ambit::install::InstallArgs {
    ambit::install::InstallArgs {
        dry_run: true,
        values: vec![],
        set: set.iter().map(|s| s.to_string()).collect(),
        namespace: "istio-system".into(),
    }
}

fn as_json(v: &serde_yaml::Value) -> serde_json::Value {
    serde_json::to_value(v).expect("yaml as json")
}

/// The Helm chart with its default values renders exactly the objects of
/// the kustomize base (deploy/kustomization.yaml), so the two never drift.
#[test]
fn chart_defaults_are_the_kustomize_base() {
    let kustomization = docs(&deploy_dir().join("kustomization.yaml"));
    let mut base: Vec<serde_json::Value> = kustomization[0]["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .flat_map(|f| docs(&deploy_dir().join(f)))
        .map(|d| as_json(&d))
        .collect();
    let mut rendered =
        ambit::install::documents(&ambit::install::render(&install_args(&[])).expect("render"))
            .expect("rendered yaml");
    let key = |d: &serde_json::Value| {
        format!(
            "{} {} {}",
            d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]
        )
    };
    base.sort_by_key(key);
    rendered.sort_by_key(key);
    assert_eq!(
        rendered.iter().map(key).collect::<Vec<_>>(),
        base.iter().map(key).collect::<Vec<_>>()
    );
    for (r, b) in rendered.iter().zip(&base) {
        assert_eq!(r, b, "{} differs between the chart and deploy/", key(b));
    }
    // The chart's image registry and tag are deploy/images.env's.
    let values: serde_yaml::Value =
        serde_yaml::from_str(ambit::install::VALUES).expect("values.yaml");
    assert_eq!(
        values["global"]["hub"].as_str(),
        Some(controller::images::value("REGISTRY"))
    );
    assert_eq!(
        values["global"]["tag"].as_str(),
        Some(controller::images::value("TAG"))
    );
}

/// The chart rendered with other values (Istio CRDs on, another registry,
/// a trust domain, the deployer off) still passes the Kubernetes schemas.
#[test]
fn rendered_chart_passes_the_kubernetes_schemas() {
    let dir = std::env::temp_dir().join(format!("ambit-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases: [&[&str]; 2] = [
        &[],
        &[
            "crds.istio=true",
            "global.hub=registry.test/mesh",
            "global.imagePullPolicy=Always",
            "trustDomain=example.org",
            "controller.waypointDeployer=false",
            "controller.replicas=3",
        ],
    ];
    let mut files = Vec::new();
    for (i, set) in cases.iter().enumerate() {
        let f = dir.join(format!("rendered-{i}.yaml"));
        std::fs::write(
            &f,
            ambit::install::render(&install_args(set)).expect("render"),
        )
        .expect("write");
        files.push(f);
    }
    let (ok, out) = validate(&files);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{out}");
}
