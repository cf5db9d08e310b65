//! Fields of interpreted kinds that Ambit accepts but does not act on. Each
//! one that is set becomes a finding naming the object and the exact field
//! (with list indices), so no config is accepted and silently ignored.
//!
//! The table lists paths relative to `spec`; `[]` walks every list item.
//! A field equal to its `default` (e.g. `exportTo: ["*"]`) says nothing and
//! is not reported.

use serde::Serialize;

use super::{Finding, Severity, Translation};
use crate::k8s::{Resources, Source, object_ref};

/// One uninterpreted field of one kind.
struct Field {
    path: &'static str,
    /// JSON of the value that means "unset" (besides null, empty, false).
    default: Option<&'static str>,
    severity: Severity,
    why: &'static str,
}

const fn warn(path: &'static str, why: &'static str) -> Field {
    Field {
        path,
        default: None,
        severity: Severity::Warning,
        why,
    }
}

const NO_EFFECT: &str = "not interpreted by Ambit: this field has no effect";

const VIRTUAL_SERVICE: &[Field] = &[
    warn(
        "tls",
        "TLS routes are not interpreted by Ambit: TLS traffic to these hosts goes to the Service unrouted",
    ),
    Field {
        path: "exportTo",
        default: Some(r#"["*"]"#),
        severity: Severity::Warning,
        why: "exportTo is not interpreted by Ambit: the object applies mesh-wide",
    },
    warn("http[].match[].statPrefix", NO_EFFECT),
    warn("http[].retries.retryRemoteLocalities", NO_EFFECT),
    warn(
        "http[].redirect.derivePort",
        "not interpreted by Ambit: the redirect keeps the scheme's default port unless `port` is set",
    ),
    warn(
        "http[].corsPolicy.unmatchedPreflights",
        "not interpreted by Ambit: unmatched preflights are forwarded upstream",
    ),
    Field {
        path: "http[].fault.abort.grpcStatus",
        default: None,
        severity: Severity::Error,
        why: "gRPC aborts are not supported by Ambit yet: use httpStatus",
    },
    warn(
        "tcp[].match[].destinationSubnets",
        "not interpreted by Ambit: this TCP match applies to every destination address",
    ),
    warn(
        "tcp[].match[].sourceLabels",
        "not interpreted by Ambit: this TCP match applies to every source",
    ),
    warn(
        "tcp[].match[].sourceNamespace",
        "not interpreted by Ambit: this TCP match applies to every source",
    ),
    warn(
        "tcp[].match[].gateways",
        "not interpreted by Ambit: this TCP match applies to mesh traffic",
    ),
];

/// Under `trafficPolicy` and every `subsets[].trafficPolicy`.
const TRAFFIC_POLICY: &[Field] = &[
    warn(
        "tls",
        "not interpreted by Ambit: mesh traffic is carried in HBONE mTLS; origination to other TLS is not supported",
    ),
    warn(
        "portLevelSettings",
        "not interpreted by Ambit: per-port policies are not applied, the top-level policy is",
    ),
    warn("tunnel", NO_EFFECT),
    warn("proxyProtocol", NO_EFFECT),
    warn("loadBalancer.localityLbSetting", NO_EFFECT),
    warn("loadBalancer.warmupDurationSecs", NO_EFFECT),
    warn(
        "loadBalancer.consistentHash.httpCookie",
        "not interpreted by Ambit: requests are not hashed on a cookie",
    ),
    warn(
        "loadBalancer.consistentHash.useSourceIp",
        "not interpreted by Ambit: requests are not hashed on the source IP",
    ),
    warn(
        "loadBalancer.consistentHash.httpQueryParameterName",
        "not interpreted by Ambit: requests are not hashed on a query parameter",
    ),
    warn("loadBalancer.consistentHash.ringHash", NO_EFFECT),
    warn("loadBalancer.consistentHash.maglev", NO_EFFECT),
    warn("loadBalancer.consistentHash.minimumRingSize", NO_EFFECT),
    warn("connectionPool.tcp.connectTimeout", NO_EFFECT),
    warn("connectionPool.tcp.tcpKeepalive", NO_EFFECT),
    warn("connectionPool.tcp.maxConnectionDuration", NO_EFFECT),
    warn("connectionPool.tcp.idleTimeout", NO_EFFECT),
    warn("connectionPool.http.maxRetries", NO_EFFECT),
    warn("connectionPool.http.idleTimeout", NO_EFFECT),
    warn("connectionPool.http.h2UpgradePolicy", NO_EFFECT),
    warn("connectionPool.http.useClientProtocol", NO_EFFECT),
    warn("connectionPool.http.maxConcurrentStreams", NO_EFFECT),
    warn("outlierDetection.splitExternalLocalOriginErrors", NO_EFFECT),
    warn("outlierDetection.consecutiveLocalOriginFailures", NO_EFFECT),
    warn(
        "outlierDetection.consecutiveErrors",
        "deprecated and not interpreted by Ambit: use consecutive5xxErrors",
    ),
];

const DESTINATION_RULE: &[Field] = &[
    Field {
        path: "exportTo",
        default: Some(r#"["*"]"#),
        severity: Severity::Warning,
        why: "exportTo is not interpreted by Ambit: the object applies mesh-wide",
    },
    warn(
        "workloadSelector",
        "not interpreted by Ambit: the rule applies to every client of the host",
    ),
];

const REQUEST_AUTHENTICATION: &[Field] = &[warn(
    "selector",
    "a selector binds sidecars; in ambient mode bind with targetRefs to a waypoint or Service: this selector has no effect",
)];

const GATEWAY: &[Field] = &[warn(
    "infrastructure.parametersRef",
    "not interpreted by Ambit: the waypoint's objects come from the controller's template, without overlays",
)];

/// Reports every set field of the tables above.
pub(super) fn report(res: &Resources, out: &mut Translation) {
    for (source, o) in &res.virtual_services {
        let object = object_ref("VirtualService", &o.metadata);
        check(&o.spec, VIRTUAL_SERVICE, "", source, &object, out);
    }
    for (source, o) in &res.destination_rules {
        let object = object_ref("DestinationRule", &o.metadata);
        check(&o.spec, DESTINATION_RULE, "", source, &object, out);
        check(
            &o.spec,
            TRAFFIC_POLICY,
            "trafficPolicy.",
            source,
            &object,
            out,
        );
        check(
            &o.spec,
            TRAFFIC_POLICY,
            "subsets[].trafficPolicy.",
            source,
            &object,
            out,
        );
    }
    for (source, o) in &res.request_authentications {
        let object = object_ref("RequestAuthentication", &o.metadata);
        check(&o.spec, REQUEST_AUTHENTICATION, "", source, &object, out);
    }
    for (source, o) in &res.gateways {
        let object = object_ref("Gateway", &o.metadata);
        check(&o.spec, GATEWAY, "", source, &object, out);
    }
}

fn check<S: Serialize>(
    spec: &S,
    fields: &[Field],
    prefix: &str,
    source: &Source,
    object: &str,
    out: &mut Translation,
) {
    let Ok(spec) = serde_json::to_value(spec) else {
        return;
    };
    for field in fields {
        let default = field.default.and_then(|d| serde_json::from_str(d).ok());
        let path = format!("{prefix}{}", field.path);
        for (at, value) in set_values(&spec, &path, "spec") {
            if default.as_ref() == Some(value) {
                continue;
            }
            out.findings.push(Finding {
                severity: field.severity,
                code: "",
                source: source.clone(),
                object: object.to_string(),
                field: at,
                message: field.why.to_string(),
            });
        }
    }
}

/// Every non-empty value at `path` under `v`, with its concrete path.
fn set_values<'a>(
    v: &'a serde_json::Value,
    path: &str,
    at: &str,
) -> Vec<(String, &'a serde_json::Value)> {
    use serde_json::Value;
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let (name, each) = match head.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (head, false),
    };
    let Some(child) = v.get(name) else {
        return Vec::new();
    };
    let here = format!("{at}.{name}");
    let items: Vec<(String, &Value)> = match (each, child) {
        (true, Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{here}[{i}]"), c))
            .collect(),
        (true, _) => Vec::new(),
        (false, c) => vec![(here, c)],
    };
    items
        .into_iter()
        .flat_map(|(at, c)| {
            if rest.is_empty() {
                let empty = match c {
                    Value::Null | Value::Bool(false) => true,
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    Value::String(s) => s.is_empty(),
                    Value::Number(_) | Value::Bool(true) => false,
                };
                if empty { Vec::new() } else { vec![(at, c)] }
            } else {
                set_values(c, rest, &at)
            }
        })
        .collect()
}
