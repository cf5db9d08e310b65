//! `ambit analyze -f DIR` (no root needed): findings name file, object and
//! field; exit 79 on errors, 0 when clean.

use std::process::Command;

fn dir_with(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ambit-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    for (f, text) in files {
        std::fs::write(d.join(f), text).expect("write");
    }
    d
}

const GOOD: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web, version: v1}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec: {host: web, subsets: [{name: v1, labels: {version: v1}}]}
"#;

fn analyze(dir: &std::path::Path) -> (i32, String) {
    analyze_as(dir, "log")
}

fn analyze_as(dir: &std::path::Path, output: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["analyze", "-o", output, "-f"])
        .arg(dir)
        .output()
        .expect("run ambit analyze");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn clean_directory_passes() {
    let d = dir_with("clean", &[("app.yaml", GOOD)]);
    let (code, out) = analyze(&d);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No validation issues"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn errors_name_file_object_and_field_and_fail() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  hosts: [web]\n  http:\n  - route:\n    - {destination: {host: web, subset: v1}, weight: -60}\n    - {destination: {host: web, subset: v9}, weight: 30}\n";
    let typo = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {actoin: DENY}\n";
    let d = dir_with(
        "bad",
        &[("app.yaml", GOOD), ("routes.yaml", vs), ("typo.yaml", typo)],
    );
    let (code, out) = analyze(&d);
    assert_eq!(code, 79, "{out}");
    assert!(
        out.contains("Error [IST0106] (VirtualService shop/web")
            && out.contains("routes.yaml (document 1)")
            && out.contains("spec.http[0].route: weights must not be negative"),
        "{out}"
    );
    assert!(
        out.contains("Warning [IST0101] (VirtualService shop/web")
            && out.contains("spec.http[0].route[1].destination.subset: subset \"v9\""),
        "{out}"
    );
    assert!(
        out.contains("AuthorizationPolicy shop/p")
            && out.contains("typo.yaml")
            && out.contains("actoin"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn json_and_yaml_carry_code_level_origin_and_place() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  hosts: [web]\n  http:\n  - route:\n    - {destination: {host: web, subset: v9}}\n";
    let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n\
              spec: {selector: {matchLabels: {app: nobody}}, action: DENY, rules: [{}]}\n";
    let d = dir_with(
        "json",
        &[("app.yaml", GOOD), ("routes.yaml", vs), ("policy.yaml", ap)],
    );
    let (code, out) = analyze_as(&d, "json");
    assert_eq!(code, 0, "warnings only: {out}");
    let messages: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let find = |code: &str| {
        messages
            .as_array()
            .expect("a list")
            .iter()
            .find(|m| m["code"] == code)
            .cloned()
            .unwrap_or_else(|| panic!("{code} in {out}"))
    };
    let subset = find("IST0101");
    assert_eq!(subset["level"], "Warning");
    assert_eq!(subset["origin"], "VirtualService shop/web");
    assert_eq!(subset["field"], "spec.http[0].route[0].destination.subset");
    assert_eq!(subset["document"], 1);
    assert!(
        subset["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("routes.yaml"))
    );
    assert_eq!(
        subset["documentationUrl"],
        "https://istio.io/latest/docs/reference/config/analysis/ist0101/"
    );
    let selector = find("IST0127");
    assert_eq!(selector["origin"], "AuthorizationPolicy shop/p");
    let (_, yaml) = analyze_as(&d, "yaml");
    assert!(
        yaml.contains("code: IST0101") && yaml.contains("origin: AuthorizationPolicy shop/p"),
        "{yaml}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
