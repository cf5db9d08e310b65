//! `ambit x trace-sink`: a small OpenTelemetry collector. It receives OTLP
//! over gRPC (the `TraceService/Export` call every OTLP exporter makes) and
//! writes one JSON line per span: trace and span ids, parent, name, the
//! reporting service and the span's attributes. Point a mesh config
//! `extensionProviders[].opentelemetry` at it to see what the waypoints
//! report without installing Jaeger; the tracing tests use it as their
//! collector.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::{Map, Value, json};

/// Where the sink listens and writes.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceSinkArgs {
    /// The OTLP/gRPC port (the collector's standard one by default).
    #[arg(long, default_value_t = 4317)]
    pub port: u16,
    /// Also append each span to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Each received span as one JSON object (what the sink prints).
pub fn spans_of(req: &ExportTraceServiceRequest) -> Vec<Value> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| value_of(a.value.as_ref()))
            .unwrap_or(Value::Null);
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(json!({
                    "traceId": hex(&s.trace_id),
                    "spanId": hex(&s.span_id),
                    "parentSpanId": hex(&s.parent_span_id),
                    "name": s.name,
                    "kind": s.kind,
                    "service": service,
                    "status": s.status.as_ref().map_or(0, |st| st.code),
                    "durationNanos": s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                    "attributes": attributes(&s.attributes),
                }));
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> Value {
    let mut m = Map::new();
    for kv in kvs {
        m.insert(kv.key.clone(), value_of(kv.value.as_ref()));
    }
    Value::Object(m)
}

fn value_of(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

struct Sink {
    out: Option<Arc<Mutex<std::fs::File>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for span in spans_of(request.get_ref()) {
            let line = span.to_string();
            println!("{line}");
            if let Some(f) = &self.out {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves until the process ends.
pub async fn run(args: TraceSinkArgs) -> anyhow::Result<()> {
    let out = match &args.out {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?,
        ))),
        None => None,
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], args.port));
    eprintln!("ambit trace-sink: OTLP/gRPC on {addr}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink { out }))
        .serve(addr)
        .await
        .map_err(|e| anyhow::anyhow!("serving OTLP on {addr}: {e}"))
}
