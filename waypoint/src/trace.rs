//! Distributed tracing at the waypoint, as Envoy does it for Istio: every
//! request gets an `x-request-id` (kept when the client sent one); when a
//! Telemetry gives the Service a tracing provider, the waypoint continues
//! the caller's trace (W3C `traceparent`, else B3 `b3` / `x-b3-*`) or starts
//! one, decides sampling (the caller's decision when it made one, else
//! `randomSamplingPercentage`), sends its own span id upstream in both
//! formats, and exports a span per sampled request over OTLP/gRPC to the
//! collector (`opentelemetry-otlp`), batched off the request path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use ambit_api::xds::proto::l7 as pb;
use ambit_hbone::client::SocketFactory;

/// `x-request-id`: the client's, or a new UUID (v4) added to the request,
/// as Envoy does. Returns the id.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        return id.to_string();
    }
    let b: [u8; 16] = rand::random();
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", v);
    }
    id
}

/// The caller's trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
}

/// Reads `traceparent` (W3C), else `b3`, else `x-b3-traceid`/`x-b3-spanid`
/// (with `x-b3-sampled` / `x-b3-flags`). Malformed headers are ignored, as
/// Envoy ignores them: the request starts a new trace.
pub fn parent_of(headers: &HeaderMap) -> Option<Parent> {
    let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(p) = text("traceparent").and_then(w3c) {
        return Some(p);
    }
    if let Some(p) = text("b3").and_then(b3_single) {
        return Some(p);
    }
    let trace_id = text("x-b3-traceid").and_then(b3_trace_id)?;
    let span_id = text("x-b3-spanid").and_then(span_id_hex)?;
    let sampled = if text("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        text("x-b3-sampled").and_then(|s| match s {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        })
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// `00-<32 hex trace>-<16 hex span>-<2 hex flags>` (other versions: the
/// same first fields, as the spec asks).
fn w3c(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = span_id_hex(span)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]` (a lone `0`/`1`/`d` is a
/// decision without a context: no parent).
fn b3_single(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = span_id_hex(parts.next()?)?;
    let sampled = match parts.next() {
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        _ => None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// B3 trace ids are 16 or 32 hex digits.
fn b3_trace_id(v: &str) -> Option<TraceId> {
    let padded = match v.len() {
        16 => format!("{v:0>32}"),
        32 => v.to_string(),
        _ => return None,
    };
    TraceId::from_hex(&padded)
        .ok()
        .filter(|t| *t != TraceId::INVALID)
}

fn span_id_hex(v: &str) -> Option<SpanId> {
    (v.len() == 16)
        .then(|| SpanId::from_hex(v).ok())
        .flatten()
        .filter(|s| *s != SpanId::INVALID)
}

/// One request's span: started when the request arrives, ended when its
/// response body ends.
#[derive(Debug)]
pub struct RequestSpan {
    context: SpanContext,
    parent: Option<SpanId>,
    start: SystemTime,
}

impl RequestSpan {
    /// Continues `parent` or starts a trace; samples per the parent's
    /// decision, else with `percentage` (0–100) chance.
    pub fn start(parent: Option<Parent>, percentage: f64) -> Self {
        let sampled = match parent.and_then(|p| p.sampled) {
            Some(decided) => decided,
            None => rand::random::<f64>() * 100.0 < percentage,
        };
        let trace_id = parent
            .map(|p| p.trace_id)
            .unwrap_or_else(|| TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes()));
        let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
        RequestSpan {
            context: SpanContext::new(
                trace_id,
                span_id,
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                false,
                TraceState::default(),
            ),
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
        }
    }

    /// Will it be exported?
    pub fn sampled(&self) -> bool {
        self.context.is_sampled()
    }

    /// The trace id (hex), for logs.
    pub fn trace_id(&self) -> String {
        self.context.trace_id().to_string()
    }

    /// Writes this span as the upstream's parent: `traceparent` and the B3
    /// headers (the single `b3` header too when the caller used it).
    pub fn inject(&self, headers: &mut HeaderMap) {
        let trace = self.context.trace_id().to_string();
        let span = self.context.span_id().to_string();
        let sampled = if self.sampled() { "1" } else { "0" };
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        set("traceparent", format!("00-{trace}-{span}-0{sampled}"));
        set("x-b3-traceid", trace.clone());
        set("x-b3-spanid", span.clone());
        set("x-b3-sampled", sampled.to_string());
        if let Some(p) = self.parent {
            set("x-b3-parentspanid", p.to_string());
        }
        if headers.contains_key("b3") {
            let mut b3 = format!("{trace}-{span}-{sampled}");
            if let Some(p) = self.parent {
                b3.push_str(&format!("-{p}"));
            }
            if let Ok(v) = HeaderValue::from_str(&b3) {
                headers.insert("b3", v);
            }
        }
    }

    /// The finished span: `name`, `attributes`, an error status when
    /// `failed`.
    pub fn finish(self, name: String, attributes: Vec<KeyValue>, failed: bool) -> SpanData {
        SpanData {
            span_context: self.context,
            parent_span_id: self.parent.unwrap_or(SpanId::INVALID),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if failed {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: InstrumentationScope::builder("ambit-waypoint").build(),
        }
    }
}

/// Spans waiting for a batch, per exporter.
const QUEUE: usize = 2048;
/// A batch is sent when this many spans are waiting...
const BATCH: usize = 512;
/// ...or this long after its first span arrived.
const FLUSH: Duration = Duration::from_millis(500);

/// The OTLP exporters, one per collector endpoint, each fed by a bounded
/// queue (a slow collector drops spans, never slows requests).
pub struct Tracers {
    service_name: String,
    socket: Option<Arc<SocketFactory>>,
    by_endpoint: Mutex<HashMap<String, mpsc::Sender<SpanData>>>,
}

impl std::fmt::Debug for Tracers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracers")
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

impl Tracers {
    /// Exporters reporting as `service_name`, connecting with `socket`
    /// (the waypoint pod's namespace) when given.
    pub fn new(service_name: String, socket: Option<Arc<SocketFactory>>) -> Self {
        Tracers {
            service_name,
            socket,
            by_endpoint: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `span` for the collector `tracing` names (its first endpoint).
    pub fn export(&self, tracing: &pb::Tracing, span: SpanData) {
        let Some(endpoint) = tracing.endpoints.first() else {
            debug!(provider = %tracing.provider, "no collector endpoint: span dropped");
            return;
        };
        let mut map = crate::sync::lock(&self.by_endpoint);
        let sender = match map.get(endpoint) {
            Some(s) if !s.is_closed() => s.clone(),
            _ => match self.start_exporter(endpoint) {
                Some(s) => {
                    map.insert(endpoint.clone(), s.clone());
                    s
                }
                None => return,
            },
        };
        drop(map);
        if sender.try_send(span).is_err() {
            debug!(%endpoint, "span queue full: span dropped");
        }
    }

    fn start_exporter(&self, endpoint: &str) -> Option<mpsc::Sender<SpanData>> {
        let addr: SocketAddr = match endpoint.parse() {
            Ok(a) => a,
            Err(e) => {
                warn!(%endpoint, error = %e, "collector endpoint is not an address");
                return None;
            }
        };
        let socket = self.socket.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let socket = socket.clone();
            async move {
                let s = match &socket {
                    Some(make) => make(addr)?,
                    None => tokio::net::TcpSocket::new_v4()?,
                };
                let stream = s.connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector);
        use opentelemetry_otlp::WithTonicConfig;
        let mut exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                warn!(%endpoint, error = %e, "OTLP exporter not built");
                return None;
            }
        };
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_attributes([KeyValue::new("service.name", self.service_name.clone())])
                .build(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(batch_loop(exporter, rx, endpoint.to_string()));
        Some(tx)
    }
}

/// Sends batches until every sender is gone.
async fn batch_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    endpoint: String,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        if let Err(e) = exporter.export(std::mem::take(&mut batch)).await {
            warn!(%endpoint, spans = n, error = %e, "OTLP export failed; spans dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn reads_w3c_then_b3_and_ignores_malformed() {
        let p = parent_of(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
        )]))
        .unwrap();
        assert_eq!(p.trace_id.to_string(), TRACE);
        assert_eq!(p.span_id.to_string(), SPAN);
        assert_eq!(p.sampled, Some(true));
        let p = parent_of(&headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))])).unwrap();
        assert_eq!(p.sampled, Some(false));
        let p = parent_of(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
        ]))
        .unwrap();
        assert_eq!(p.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(p.sampled, None);
        for bad in [
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            "garbage".to_string(),
        ] {
            assert_eq!(parent_of(&headers(&[("traceparent", &bad)])), None, "{bad}");
        }
    }

    #[test]
    fn continues_the_trace_and_follows_the_callers_decision() {
        let parent = parent_of(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
        )]));
        // The caller sampled: sampled even at 0%.
        let span = RequestSpan::start(parent, 0.0);
        assert!(span.sampled());
        let mut h = headers(&[("b3", "x")]);
        span.inject(&mut h);
        let tp = h["traceparent"].to_str().unwrap().to_string();
        assert!(
            tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
            "{tp}"
        );
        assert!(
            !tp.contains(SPAN),
            "the upstream's parent is the waypoint's span: {tp}"
        );
        assert_eq!(h["x-b3-parentspanid"], SPAN);
        assert_eq!(h["x-b3-traceid"], TRACE);
        assert!(h["b3"].to_str().unwrap().ends_with(&format!("-1-{SPAN}")));
        let data = span.finish("web:8080/*".into(), vec![], false);
        assert_eq!(data.parent_span_id.to_string(), SPAN);
        // No parent: the percentage decides.
        assert!(!RequestSpan::start(None, 0.0).sampled());
        assert!(RequestSpan::start(None, 100.0).sampled());
        let unsampled = parent_of(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-00"),
        )]));
        assert!(!RequestSpan::start(unsampled, 100.0).sampled());
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = headers(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
    }
}
