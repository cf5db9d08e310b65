//! A waypoint Gateway's `status` as istiod reports it: `Accepted` and
//! `Programmed` conditions, the Service host names it is reachable at, and
//! one status per listener. `Programmed` says whether the Service serving
//! the Gateway exists with the listener's port; the messages and reasons
//! are istiod's, word for word, so scripts that wait on them keep working.

use ambit_api::k8s::Source;
use ambit_api::k8s::networking::Gateway;
use ambit_api::translate::waypoints::{listeners, service_hosts};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

/// One condition before it is stamped with generation and time.
struct Condition {
    kind: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

impl Condition {
    fn holds(kind: &'static str, reason: &str, message: String) -> Self {
        Condition {
            kind,
            ok: true,
            reason: reason.into(),
            message,
        }
    }

    fn fails(kind: &'static str, reason: &str, message: String) -> Self {
        Condition {
            kind,
            ok: false,
            reason: reason.into(),
            message,
        }
    }
}

/// "a", "a and b", "a, b, and c" (istiod's `humanReadableJoin`).
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

/// Where the Gateway is served: `host:port` for each Service port that
/// matches a listener, and what could not be resolved (istiod's
/// `ResolveGatewayInstances`, without endpoint hints).
struct Resolved {
    internal: Vec<String>,
    warnings: Vec<String>,
    all_usable: bool,
}

fn resolve(gateway: &Gateway, hosts: &[String], services: &[(Source, Service)]) -> Resolved {
    let ns = gateway.metadata.namespace.as_deref().unwrap_or("default");
    let mut ports: Vec<i64> = listeners(gateway)
        .iter()
        .filter_map(|l| l.get("port").and_then(Value::as_i64))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let mut out = Resolved {
        internal: Vec::new(),
        warnings: Vec::new(),
        all_usable: true,
    };
    for host in hosts {
        let (name, host_ns) = {
            let mut labels = host.split('.');
            (labels.next().unwrap_or(""), labels.next().unwrap_or(""))
        };
        let service = services.iter().map(|(_, s)| s).find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == host_ns
                && host_ns == ns
        });
        let Some(service) = service else {
            out.warnings.push(format!("hostname {host:?} not found"));
            continue;
        };
        let service_ports: Vec<i64> = service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| i64::from(p.port))
            .collect();
        for port in &ports {
            if service_ports.contains(port) {
                out.internal.push(format!("{host}:{port}"));
            } else {
                out.warnings
                    .push(format!("port {port} not found for hostname {host:?}"));
                out.all_usable = false;
            }
        }
    }
    out.internal.sort();
    out.warnings.sort();
    out
}

/// The conditions of the Gateway itself.
fn gateway_conditions(hosts: &[String], skipped: &[String], r: &Resolved) -> Vec<Condition> {
    let accepted = if skipped.is_empty() {
        Condition::holds("Accepted", "Accepted", "Resource accepted".into())
    } else {
        Condition::fails(
            "Accepted",
            "UnsupportedAddress",
            format!(
                "only Hostname is supported, ignoring [{}]",
                skipped.join(" ")
            ),
        )
    };
    let programmed = if hosts.is_empty() {
        Condition::fails(
            "Programmed",
            "UnsupportedAddress",
            "Failed to assign to any requested addresses".into(),
        )
    } else if !r.warnings.is_empty() {
        let warnings = r.warnings.join("; ");
        let message = if r.internal.is_empty() {
            format!("Failed to assign to any requested addresses: {warnings}")
        } else {
            format!(
                "Assigned to service(s) {}, but failed to assign to all requested addresses: {warnings}",
                human_join(&r.internal)
            )
        };
        let reason = if r.all_usable {
            "AddressNotAssigned"
        } else {
            "AddressNotUsable"
        };
        Condition::fails("Programmed", reason, message)
    } else if r.internal.is_empty() {
        Condition::holds("Programmed", "Programmed", "Resource programmed".into())
    } else {
        Condition::holds(
            "Programmed",
            "Programmed",
            format!(
                "Resource programmed, assigned to service(s) {}",
                human_join(&r.internal)
            ),
        )
    };
    vec![accepted, programmed]
}

/// A listener's conditions: a waypoint expects one listener on 15008
/// speaking HBONE, and says so when it is not (istiod accepts the Gateway
/// anyway).
fn listener_conditions(listener: &Value) -> Vec<Condition> {
    let fine = "No errors found".to_string();
    let expected = listener.get("port").and_then(Value::as_i64) == Some(15008)
        && listener.get("protocol").and_then(Value::as_str) == Some("HBONE");
    let accepted = if expected {
        Condition::holds("Accepted", "Accepted", fine.clone())
    } else {
        Condition::fails(
            "Accepted",
            "UnsupportedProtocol",
            r#"Expected a single listener on port 15008 with protocol "HBONE""#.into(),
        )
    };
    vec![
        accepted,
        Condition::holds("Programmed", "Programmed", fine.clone()),
        Condition::fails("Conflicted", "NoConflicts", fine.clone()),
        Condition::holds("ResolvedRefs", "ResolvedRefs", fine),
    ]
}

/// Stamps conditions with the generation, keeping a condition's previous
/// `lastTransitionTime` while its status is unchanged.
fn stamp(
    conditions: Vec<Condition>,
    previous: Option<&Value>,
    generation: i64,
    now: &str,
) -> Value {
    let previous = previous.and_then(Value::as_array);
    Value::Array(
        conditions
            .into_iter()
            .map(|c| {
                let status = if c.ok { "True" } else { "False" };
                let since = previous
                    .into_iter()
                    .flatten()
                    .find(|p| p["type"] == c.kind && p["status"] == status)
                    .and_then(|p| p["lastTransitionTime"].as_str())
                    .unwrap_or(now);
                json!({
                    "type": c.kind,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

/// The `status` to write for `gateway`, given the Services that exist now;
/// `now` (RFC 3339) stamps conditions that changed. Equal to the Gateway's
/// current status when nothing changed, so an unchanged Gateway is never
/// written.
pub fn gateway_status(gateway: &Gateway, services: &[(Source, Service)], now: &str) -> Value {
    let (hosts, skipped) = service_hosts(gateway);
    let resolved = resolve(gateway, &hosts, services);
    let generation = gateway.metadata.generation.unwrap_or(0);
    let current = gateway.status.as_ref();
    let conditions = stamp(
        gateway_conditions(&hosts, &skipped, &resolved),
        current.and_then(|s| s.get("conditions")),
        generation,
        now,
    );
    let mut addresses: Vec<Value> = Vec::new();
    for internal in &resolved.internal {
        let host = internal
            .rsplit_once(':')
            .map_or(internal.as_str(), |(h, _)| h);
        let entry = json!({"type": "Hostname", "value": host});
        if !addresses.contains(&entry) {
            addresses.push(entry);
        }
    }
    // Once reported, an address stays while the Service is briefly away.
    if addresses.is_empty()
        && let Some(Value::Array(old)) = current.and_then(|s| s.get("addresses"))
    {
        addresses = old.clone();
    }
    let previous_listeners = current
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array);
    let listeners: Vec<Value> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| {
            let name = l.get("name").cloned().unwrap_or(Value::Null);
            let previous = previous_listeners
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .and_then(|p| p.get("conditions"));
            json!({
                "name": name,
                "supportedKinds": [],
                "attachedRoutes": 0,
                "conditions": stamp(listener_conditions(l), previous, generation, now),
            })
        })
        .collect();
    let mut status = json!({"conditions": conditions, "listeners": listeners});
    if !addresses.is_empty() {
        status["addresses"] = Value::Array(addresses);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(extra_meta: &str, spec_extra: &str) -> Gateway {
        serde_yaml::from_str(&format!(
            "metadata: {{name: waypoint, namespace: demo, generation: 3{extra_meta}}}\n\
             spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n{spec_extra}"
        ))
        .expect("gateway")
    }

    fn service(name: &str, port: i32) -> (Source, Service) {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"ports": [{"port": port}]},
        }))
        .expect("service");
        (Source::default(), s)
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .expect("condition")
    }

    #[test]
    fn programmed_once_the_service_serves_15008() {
        let g = gateway("", "");
        let pending = gateway_status(&g, &[], "t1");
        let p = condition(&pending, "Programmed");
        assert_eq!(p["status"], "False");
        assert_eq!(p["reason"], "AddressNotAssigned");
        assert_eq!(
            p["message"],
            r#"Failed to assign to any requested addresses: hostname "waypoint.demo.svc.cluster.local" not found"#
        );
        assert!(pending.get("addresses").is_none());
        assert_eq!(
            condition(&pending, "Accepted")["message"],
            "Resource accepted"
        );

        let ready = gateway_status(&g, &[service("waypoint", 15008)], "t2");
        let p = condition(&ready, "Programmed");
        assert_eq!(p["status"], "True");
        assert_eq!(p["reason"], "Programmed");
        assert_eq!(
            p["message"],
            "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008"
        );
        assert_eq!(p["observedGeneration"], 3);
        assert_eq!(p["lastTransitionTime"], "t2");
        assert_eq!(
            ready["addresses"],
            json!([{"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"}])
        );
        assert_eq!(ready["listeners"][0]["name"], "mesh");
        assert_eq!(ready["listeners"][0]["conditions"][0]["status"], "True");

        let wrong_port = gateway_status(&g, &[service("waypoint", 80)], "t2");
        assert_eq!(
            condition(&wrong_port, "Programmed")["reason"],
            "AddressNotUsable"
        );
    }

    #[test]
    fn unchanged_status_keeps_its_times_so_it_is_not_rewritten() {
        let mut g = gateway("", "");
        let first = gateway_status(&g, &[service("waypoint", 15008)], "t1");
        g.status = Some(first.clone());
        let again = gateway_status(&g, &[service("waypoint", 15008)], "t9");
        assert_eq!(again, first);
        // Service gone: Programmed flips (new time), Accepted keeps t1,
        // the address stays.
        let gone = gateway_status(&g, &[], "t9");
        assert_eq!(condition(&gone, "Programmed")["lastTransitionTime"], "t9");
        assert_eq!(condition(&gone, "Accepted")["lastTransitionTime"], "t1");
        assert_eq!(gone["addresses"], first["addresses"]);
    }

    #[test]
    fn addresses_and_listeners_as_istio_reports_them() {
        let g = gateway(
            "",
            "  addresses: [{type: Hostname, value: shared}, {type: IPAddress, value: 10.0.0.1}]\n",
        );
        let s = gateway_status(&g, &[service("shared", 15008)], "t");
        let a = condition(&s, "Accepted");
        assert_eq!(a["status"], "False");
        assert_eq!(a["reason"], "UnsupportedAddress");
        assert_eq!(
            a["message"],
            "only Hostname is supported, ignoring [10.0.0.1]"
        );
        assert_eq!(
            condition(&s, "Programmed")["message"],
            "Resource programmed, assigned to service(s) shared.demo.svc.cluster.local:15008"
        );

        let odd: Gateway = serde_yaml::from_str(
            "metadata: {name: w, namespace: demo}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}",
        )
        .expect("gateway");
        let s = gateway_status(&odd, &[service("w", 80)], "t");
        let l = &s["listeners"][0]["conditions"][0];
        assert_eq!(l["status"], "False");
        assert_eq!(l["reason"], "UnsupportedProtocol");
    }

    #[test]
    fn joins_like_istio() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(human_join(&v(&["a"])), "a");
        assert_eq!(human_join(&v(&["a", "b"])), "a and b");
        assert_eq!(human_join(&v(&["a", "b", "c"])), "a, b, and c");
    }
}
