//! The mesh config: ConfigMap `istio-system/istio`, key `mesh`, as istiod
//! reads it. Ambit interprets the fields that change what the data plane
//! enforces: `trustDomain` (and `trustDomainAliases`), `rootNamespace`,
//! `pathNormalization.normalization` and
//! `defaultConfig.gatewayTopology.numTrustedProxies`. Every other field that
//! is set is a finding naming it; a value Istio would refuse is an Error
//! (the controller then keeps the last good mesh config).

use ambit_identity::DEFAULT_TRUST_DOMAIN;
use serde_yaml::Value;

use super::{Finding, Severity, Translation};
use crate::k8s::{Resources, Source};
use crate::xds::proto::l7 as pb;

/// The root namespace Ambit assumes (Istio's default `rootNamespace`).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Path normalizations Istio's `MeshConfig.ProxyPathNormalization` defines.
pub const PATH_NORMALIZATIONS: &[&str] = &[
    "DEFAULT",
    "NONE",
    "BASE",
    "MERGE_SLASHES",
    "DECODE_AND_MERGE_SLASHES",
];

/// What the mesh config says, with Istio's defaults for what it leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// `trustDomain`: the SPIFFE trust domain of every workload identity.
    pub trust_domain: String,
    /// `trustDomainAliases`: other trust domains policies treat as this one.
    pub trust_domain_aliases: Vec<String>,
    /// `pathNormalization.normalization` ("DEFAULT" is written as "BASE").
    pub path_normalization: String,
    /// `defaultConfig.gatewayTopology.numTrustedProxies`.
    pub num_trusted_proxies: u32,
    /// `extensionProviders`: the OpenTelemetry tracing providers.
    pub extension_providers: Vec<TracingProvider>,
    /// `defaultProviders.tracing`: providers used when a Telemetry names none.
    pub default_tracing_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling` in thousandths of a percent (Istio's
    /// default 1%).
    pub tracing_sampling_millipercent: u32,
    /// `accessLogFile`: set (any path), waypoints log every request unless a
    /// Telemetry turns it off (the line goes to the proxy's log).
    pub access_log_file: String,
    /// `extensionProviders[]` names with `envoyFileAccessLog`.
    pub access_log_providers: Vec<String>,
    /// `defaultProviders.accessLogging`.
    pub default_access_log_providers: Vec<String>,
}

/// One `extensionProviders[]` entry with an `opentelemetry` collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingProvider {
    /// `name`, as Telemetry resources refer to it.
    pub name: String,
    /// `opentelemetry.service`: the collector's Service (`host` or `ns/host`).
    pub service: String,
    /// `opentelemetry.port` (OTLP over gRPC).
    pub port: u16,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            trust_domain_aliases: vec![],
            path_normalization: "BASE".into(),
            num_trusted_proxies: 0,
            extension_providers: vec![],
            default_tracing_providers: vec![],
            tracing_sampling_millipercent: 1000,
            access_log_file: String::new(),
            access_log_providers: vec![],
            default_access_log_providers: vec![],
        }
    }
}

/// Reads `data.mesh` text into a config, reporting into `findings` under
/// `source`/`object`. What it leaves out, or gets wrong, stays as in
/// `defaults`.
pub fn parse_mesh(
    text: &str,
    defaults: &MeshConfig,
    source: &Source,
    object: &str,
    findings: &mut Vec<Finding>,
) -> MeshConfig {
    let mut report = |severity, field: &str, message: String| {
        findings.push(Finding {
            severity,
            code: "",
            source: source.clone(),
            object: object.to_string(),
            field: format!("data.mesh.{field}"),
            message,
        })
    };
    let mut mesh = defaults.clone();
    let root: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => return mesh,
        Ok(v @ Value::Mapping(_)) => v,
        Ok(_) => {
            report(Severity::Error, "", "is not a YAML mapping".into());
            return mesh;
        }
        Err(e) => {
            report(Severity::Error, "", format!("is not valid YAML: {e}"));
            return mesh;
        }
    };
    let mut unread = Vec::new();
    walk(&root, "", &mut unread);
    for (path, value) in unread {
        match path.as_str() {
            "trustDomain" => match value.as_str() {
                Some(td) if ambit_identity::is_valid_trust_domain(td) => {
                    mesh.trust_domain = td.to_string()
                }
                _ => report(
                    Severity::Error,
                    &path,
                    format!(
                        "{value:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')"
                    ),
                ),
            },
            "trustDomainAliases" => match value.as_sequence() {
                Some(list) => {
                    for (i, v) in list.iter().enumerate() {
                        match v.as_str() {
                            Some(td) if ambit_identity::is_valid_trust_domain(td) => {
                                mesh.trust_domain_aliases.push(td.to_string())
                            }
                            _ => report(
                                Severity::Error,
                                &format!("{path}[{i}]"),
                                format!("{v:?} is not a trust domain"),
                            ),
                        }
                    }
                }
                None => report(Severity::Error, &path, "must be a list".into()),
            },
            "rootNamespace" => {
                if value.as_str() != Some(ROOT_NAMESPACE) {
                    report(
                        Severity::Error,
                        &path,
                        format!(
                            "Ambit's root namespace is {ROOT_NAMESPACE}; {value:?} is not supported: \
                             mesh-wide policies there would not apply where you expect"
                        ),
                    );
                }
            }
            "pathNormalization.normalization" => match value.as_str() {
                Some(n) if PATH_NORMALIZATIONS.contains(&n) => {
                    mesh.path_normalization = if n == "DEFAULT" { "BASE" } else { n }.to_string()
                }
                _ => report(
                    Severity::Error,
                    &path,
                    format!("{value:?} is not one of {PATH_NORMALIZATIONS:?}"),
                ),
            },
            "defaultConfig.gatewayTopology.numTrustedProxies" => {
                match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => mesh.num_trusted_proxies = n,
                    None => report(
                        Severity::Error,
                        &path,
                        format!("{value:?} is not a non-negative integer"),
                    ),
                }
            }
            "extensionProviders" => match value.as_sequence() {
                Some(list) => {
                    for (i, p) in list.iter().enumerate() {
                        match extension_provider(p) {
                            Ok(Provider::Tracing(provider)) => {
                                mesh.extension_providers.push(provider)
                            }
                            Ok(Provider::AccessLog(name)) => mesh.access_log_providers.push(name),
                            Ok(Provider::Other) => report(
                                Severity::Warning,
                                &format!("{path}[{i}]"),
                                "only opentelemetry (OTLP over gRPC) tracing and envoyFileAccessLog providers are interpreted: this provider has no effect".into(),
                            ),
                            Err(e) => report(Severity::Error, &format!("{path}[{i}]"), e),
                        }
                    }
                }
                None => report(Severity::Error, &path, "must be a list".into()),
            },
            "accessLogFile" => match value.as_str() {
                Some(f) => mesh.access_log_file = f.to_string(),
                None => report(Severity::Error, &path, "must be a file path".into()),
            },
            "accessLogEncoding" => match value.as_str() {
                Some("TEXT") => {}
                Some("JSON") => report(
                    Severity::Warning,
                    &path,
                    "the access log's encoding is the proxy's log format: set LOG_FORMAT=json in the waypoint's environment (one format per process)".into(),
                ),
                _ => report(Severity::Error, &path, format!("{value:?} is not TEXT or JSON")),
            },
            "defaultProviders.accessLogging" => match value.as_sequence() {
                Some(list) => {
                    mesh.default_access_log_providers =
                        list.iter().filter_map(Value::as_str).map(str::to_string).collect()
                }
                None => report(Severity::Error, &path, "must be a list of provider names".into()),
            },
            "defaultProviders.tracing" => match value.as_sequence() {
                Some(list) => {
                    mesh.default_tracing_providers = list
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                }
                None => report(
                    Severity::Error,
                    &path,
                    "must be a list of provider names".into(),
                ),
            },
            "defaultConfig.tracing.sampling" => match value.as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => {
                    mesh.tracing_sampling_millipercent = (p * 1000.0).round() as u32
                }
                _ => report(
                    Severity::Error,
                    &path,
                    format!("{value:?} is not a percentage (0 to 100)"),
                ),
            },
            _ => report(
                Severity::Warning,
                &path,
                "not interpreted by Ambit: this mesh config field has no effect".into(),
            ),
        }
    }
    mesh
}

/// What an `extensionProviders[]` entry is to Ambit.
enum Provider {
    /// An OpenTelemetry collector for spans.
    Tracing(TracingProvider),
    /// `envoyFileAccessLog`: access lines (in the proxy's log; the path and
    /// format are the process's).
    AccessLog(String),
    /// A kind Ambit does not export to (zipkin, envoyExtAuthz, ...).
    Other,
}

fn extension_provider(p: &Value) -> Result<Provider, String> {
    let name = p["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("name is required")?
        .to_string();
    if p.get("envoyFileAccessLog").is_some() {
        return Ok(Provider::AccessLog(name));
    }
    let Some(otel) = p.get("opentelemetry") else {
        return Ok(Provider::Other);
    };
    let service = otel["service"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("opentelemetry.service is required")?
        .to_string();
    let port = otel["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or("opentelemetry.port must be a port number")?;
    if otel.get("http").is_some() {
        return Err(
            "opentelemetry.http (OTLP over HTTP) is not supported: use the gRPC port".into(),
        );
    }
    Ok(Provider::Tracing(TracingProvider {
        name,
        service,
        port,
    }))
}

/// Leaf fields of the mesh config, as dotted paths; the interpreted maps
/// are walked into, every other value is a leaf (lists included).
fn walk<'a>(value: &'a Value, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    const MAPS: &[&str] = &[
        "",
        "pathNormalization",
        "defaultConfig",
        "defaultConfig.gatewayTopology",
        "defaultConfig.tracing",
        "defaultProviders",
    ];
    let Value::Mapping(map) = value else {
        out.push((prefix.to_string(), value));
        return;
    };
    if !MAPS.contains(&prefix) {
        out.push((prefix.to_string(), value));
        return;
    }
    for (k, v) in map {
        let key = k
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{k:?}"));
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        if v.is_null() {
            continue;
        }
        walk(v, &path, out);
    }
}

/// The mesh config of `res`, with findings. Two objects named
/// `istio-system/istio` (two files) are an error; the first is used.
pub(super) fn translate_mesh(
    res: &Resources,
    defaults: &MeshConfig,
    out: &mut Translation,
) -> MeshConfig {
    let mut mesh = defaults.clone();
    for (i, (source, cm)) in res.mesh_configs.iter().enumerate() {
        let object = crate::k8s::object_ref("ConfigMap", &cm.metadata);
        if i > 0 {
            out.findings.push(Finding {
                severity: Severity::Error,
                code: "",
                source: source.clone(),
                object,
                field: "metadata.name".into(),
                message: "a second mesh config: only the first is used".into(),
            });
            continue;
        }
        let data = cm.data.as_ref();
        for key in data.into_iter().flat_map(|d| d.keys()) {
            if key != "mesh" {
                out.findings.push(Finding {
                    severity: Severity::Warning,
                    code: "",
                    source: source.clone(),
                    object: object.clone(),
                    field: format!("data.{key}"),
                    message: "not interpreted by Ambit (only data.mesh is)".into(),
                });
            }
        }
        if let Some(text) = data.and_then(|d| d.get("mesh")) {
            mesh = parse_mesh(text, defaults, source, &object, &mut out.findings);
        }
    }
    mesh
}

/// The mesh config of `res` alone (findings are the translation's job): what
/// a process needs before it translates, e.g. the CA's trust domain.
pub fn mesh_config(res: &Resources, defaults: &MeshConfig) -> MeshConfig {
    translate_mesh(res, defaults, &mut Translation::default())
}

/// Istio's trust-domain migration for waypoint policies
/// (`pilot/pkg/security/trustdomain`): a principal whose trust domain is the
/// mesh's, one of its aliases, or `cluster.local` stands for the same
/// identity in every one of them. ztunnel policies are left as written, as
/// Istio's ambient translation leaves them.
pub(super) fn migrate_principals(l7: &mut [pb::L7Service], mesh: &MeshConfig) {
    if mesh.trust_domain == DEFAULT_TRUST_DOMAIN && mesh.trust_domain_aliases.is_empty() {
        return;
    }
    let domains: Vec<&str> = std::iter::once(mesh.trust_domain.as_str())
        .chain(mesh.trust_domain_aliases.iter().map(String::as_str))
        .collect();
    let migrate = |list: &mut Vec<String>| {
        if !list.is_empty() {
            *list = with_aliases(list, &domains);
        }
    };
    for rule in l7
        .iter_mut()
        .flat_map(|s| s.authorization.iter_mut())
        .flat_map(|p| p.rules.iter_mut())
    {
        for from in &mut rule.from {
            migrate(&mut from.principals);
            migrate(&mut from.not_principals);
        }
        for c in rule.when.iter_mut().filter(|c| c.key == "source.principal") {
            migrate(&mut c.values);
            migrate(&mut c.not_values);
        }
    }
}

fn with_aliases(principals: &[String], domains: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: String| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for p in principals {
        let parts: Vec<&str> = p.split('/').collect();
        // Only `td/ns/NS/sa/SA` with a trust domain that is not `*` is enforced.
        if parts.len() != 5 || parts[0] == "*" {
            push(p.clone());
            continue;
        }
        let td = parts[0];
        if td != DEFAULT_TRUST_DOMAIN && !domains.iter().any(|d| suffix_match(d, td)) {
            push(p.clone());
            continue;
        }
        let rest = parts[1..].join("/");
        for d in domains {
            if suffix_match(d, td) {
                push(p.clone());
            } else {
                push(format!("{d}/{rest}"));
            }
        }
    }
    out
}

/// A principal's trust domain written `*suffix` matches a domain ending so.
fn suffix_match(domain: &str, pattern: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => domain.ends_with(suffix),
        None => domain == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (MeshConfig, Vec<Finding>) {
        let mut findings = Vec::new();
        let source = Source {
            file: "mesh.yaml".into(),
            doc: 1,
        };
        let mesh = parse_mesh(
            text,
            &MeshConfig::default(),
            &source,
            "ConfigMap istio-system/istio",
            &mut findings,
        );
        (mesh, findings)
    }

    #[test]
    fn interpreted_fields_and_defaults() {
        let (mesh, findings) = parse("");
        assert_eq!(mesh, MeshConfig::default());
        assert!(findings.is_empty());
        let (mesh, findings) = parse(
            "trustDomain: example.org\ntrustDomainAliases: [old.example]\nrootNamespace: istio-system\n\
             pathNormalization: {normalization: MERGE_SLASHES}\n\
             defaultConfig: {gatewayTopology: {numTrustedProxies: 2}, tracing: {sampling: 2.5}}\n\
             defaultProviders: {tracing: [otel], accessLogging: [file]}\n\
             extensionProviders: [{name: otel, opentelemetry: {service: otel.o.svc.cluster.local, port: 4317}}, {name: file, envoyFileAccessLog: {path: /dev/stdout}}]\n\
             accessLogFile: /dev/stdout\naccessLogEncoding: TEXT\n",
        );
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(
            mesh,
            MeshConfig {
                trust_domain: "example.org".into(),
                trust_domain_aliases: vec!["old.example".into()],
                path_normalization: "MERGE_SLASHES".into(),
                num_trusted_proxies: 2,
                extension_providers: vec![TracingProvider {
                    name: "otel".into(),
                    service: "otel.o.svc.cluster.local".into(),
                    port: 4317,
                }],
                default_tracing_providers: vec!["otel".into()],
                tracing_sampling_millipercent: 2500,
                access_log_file: "/dev/stdout".into(),
                access_log_providers: vec!["file".into()],
                default_access_log_providers: vec!["file".into()],
            }
        );
        let (_, bad) = parse("extensionProviders: [{name: x, opentelemetry: {service: s}}]");
        assert!(
            bad.iter().any(|f| f.field == "data.mesh.extensionProviders[0]"
                && f.message.contains("port")),
            "{bad:?}"
        );
        assert_eq!(
            parse("pathNormalization: {normalization: DEFAULT}")
                .0
                .path_normalization,
            "BASE"
        );
    }

    #[test]
    fn bad_values_are_errors_and_other_fields_are_named() {
        let (mesh, findings) = parse(
            "trustDomain: Example.ORG\npathNormalization: {normalization: MERGE}\n\
             defaultConfig: {discoveryAddress: istiod:15012, gatewayTopology: {numTrustedProxies: -1}}\n\
             enablePrometheusMerge: true\nrootNamespace: mesh-root\n",
        );
        assert_eq!(mesh, MeshConfig::default(), "bad values leave defaults");
        let by_field: Vec<(Severity, &str)> = findings
            .iter()
            .map(|f| (f.severity, f.field.as_str()))
            .collect();
        for expected in [
            (Severity::Error, "data.mesh.trustDomain"),
            (Severity::Error, "data.mesh.pathNormalization.normalization"),
            (
                Severity::Error,
                "data.mesh.defaultConfig.gatewayTopology.numTrustedProxies",
            ),
            (Severity::Error, "data.mesh.rootNamespace"),
            (
                Severity::Warning,
                "data.mesh.defaultConfig.discoveryAddress",
            ),
            (Severity::Warning, "data.mesh.enablePrometheusMerge"),
        ] {
            assert!(by_field.contains(&expected), "{expected:?} in {by_field:?}");
        }
        assert_eq!(findings.len(), 6, "{findings:?}");
        let (_, findings) = parse("[1, 2]");
        assert_eq!(findings[0].severity, Severity::Error);
    }

    #[test]
    fn principals_follow_the_trust_domain_as_istio_migrates_them() {
        let d = ["example.org", "old.example"];
        let got = with_aliases(
            &[
                "cluster.local/ns/a/sa/b".into(),
                "old.example/ns/a/sa/c".into(),
                "other.td/ns/a/sa/d".into(),
                "*/ns/a/sa/e".into(),
                "*.example/ns/a/sa/f".into(),
                "ns/a/sa/g".into(),
            ],
            &d,
        );
        assert_eq!(
            got,
            vec![
                "example.org/ns/a/sa/b",
                "old.example/ns/a/sa/b",
                "example.org/ns/a/sa/c",
                "old.example/ns/a/sa/c",
                "other.td/ns/a/sa/d",
                "*/ns/a/sa/e",
                "example.org/ns/a/sa/f",
                "*.example/ns/a/sa/f",
                "ns/a/sa/g",
            ]
        );
    }
}
