#![allow(dead_code)] // shared by test binaries that each use part of it

//! A Kubernetes API server on loopback, at the HTTP level: objects by path,
//! list (with `labelSelector`/`fieldSelector` on `k=v`, labels also on
//! `k`), watch (held open,
//! no events), get, create (409 when it exists), replace (409 unless the
//! `resourceVersion` matches), server-side apply (PATCH
//! `application/apply-patch+yaml`, the body stored as the object), status
//! apply, delete, and a pod's `portforward` (the WebSocket `v4.channel.k8s.io`
//! protocol kubectl and kube-rs speak, to an address the test names). API
//! groups can be left "not installed" (404 under `/apis/GROUP/`). Every
//! request is recorded with its body, for tests to assert on.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};

type Body = BoxBody<Bytes, Infallible>;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// (api prefix, plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String, String), Value>,
    requests: Vec<Recorded>,
    missing_groups: Vec<String>,
    version: u64,
    /// Open watch streams (kept so they stay open).
    watches: Vec<tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
    /// Port-forward targets: (namespace, pod, port) → address.
    forwards: BTreeMap<(String, String, u16), SocketAddr>,
}

/// The running server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
}

/// Where a path points.
struct Target {
    prefix: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (plural.to_string(), None, false),
        [plural, name] => (plural.to_string(), Some(name.to_string()), false),
        [plural, name, "status"] => (plural.to_string(), Some(name.to_string()), true),
        _ => return None,
    };
    Some(Target {
        prefix,
        plural,
        namespace,
        name,
        status,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_selector(object: &Value, selector: Option<&str>, at: &str) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            // A bare key: the label exists.
            return at == "labels" && !object["metadata"]["labels"][term].is_null();
        };
        if at == "fields" {
            let mut field = object;
            for part in k.split('.') {
                field = &field[part];
            }
            field == v
        } else {
            object["metadata"]["labels"][k] == v
        }
    })
}

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn not_found(what: &str) -> Response<Body> {
    json_response(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
    )
}

impl FakeApi {
    /// Starts the server on 127.0.0.1.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API");
        Self::serve(listener)
    }

    /// Serves on `listener` (one bound in a test's network namespace).
    pub fn serve(listener: tokio::net::TcpListener) -> FakeApi {
        let addr = listener.local_addr().expect("addr");
        let api = FakeApi {
            state: Arc::new(Mutex::new(State::default())),
            addr,
        };
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let api = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        api
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        self.kubeconfig_with_ca(dir, None)
    }

    /// A kubeconfig file pointing at this server, naming `ca_pem` as the
    /// cluster's CA (a client in an image without a CA bundle needs one to
    /// build its TLS settings, though this server speaks plain HTTP).
    pub fn kubeconfig_with_ca(
        &self,
        dir: &std::path::Path,
        ca_pem: Option<&str>,
    ) -> std::path::PathBuf {
        use base64::Engine;
        let path = dir.join("kubeconfig");
        let ca = ca_pem
            .map(|pem| {
                format!(
                    ", certificate-authority-data: {}",
                    base64::engine::general_purpose::STANDARD.encode(pem)
                )
            })
            .unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"{ca}}}}}]\n\
             users: [{{name: fake, user: {{token: test}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Answers 404 for everything under `/apis/GROUP/` (its CRDs are not
    /// installed).
    pub fn without_group(&self, group: &str) {
        self.state
            .lock()
            .expect("state")
            .missing_groups
            .push(group.to_string());
    }

    /// Puts `object` at its collection `prefix`/`plural` (namespace and
    /// name from its metadata).
    pub fn insert(&self, prefix: &str, plural: &str, object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut s = self.state.lock().expect("state");
        s.version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects
            .insert((prefix.into(), plural.into(), ns, name), object);
    }

    /// The object at `prefix`/`plural`/`namespace`/`name`, if any.
    pub fn object(&self, prefix: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .expect("state")
            .objects
            .get(&(prefix.into(), plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Removes the object at `prefix`/`plural`/`namespace`/`name`.
    pub fn remove(&self, prefix: &str, plural: &str, namespace: &str, name: &str) {
        self.state.lock().expect("state").objects.remove(&(
            prefix.into(),
            plural.into(),
            namespace.into(),
            name.into(),
        ));
    }

    /// Every object in `prefix`/`plural`, any namespace.
    pub fn list(&self, prefix: &str, plural: &str) -> Vec<Value> {
        self.state
            .lock()
            .expect("state")
            .objects
            .iter()
            .filter(|((p, pl, _, _), _)| p == prefix && pl == plural)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("state").requests.clone()
    }

    /// Requests other than lists and watches.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// Port-forwards to pod `namespace/pod`'s `port` reach `to`.
    pub fn forward_pod(&self, namespace: &str, pod: &str, port: u16, to: SocketAddr) {
        self.state
            .lock()
            .expect("state")
            .forwards
            .insert((namespace.into(), pod.into(), port), to);
    }

    /// `GET .../pods/NAME/portforward?ports=P` upgraded to a WebSocket: the
    /// data channel (0) carries the TCP stream to the forwarded address, the
    /// error channel (1) stays quiet; each channel's first frame names the
    /// port, as the API server does.
    fn portforward(&self, req: Request<Incoming>) -> Option<Response<Body>> {
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let (ns, rest) = rest.split_once("/pods/")?;
        let pod = rest.strip_suffix("/portforward")?;
        let port: u16 = req
            .uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("ports="))?
            .parse()
            .ok()?;
        let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
        let to = self
            .state
            .lock()
            .expect("state")
            .forwards
            .get(&(ns.to_string(), pod.to_string(), port))
            .copied();
        self.state.lock().expect("state").requests.push(Recorded {
            method: "GET".into(),
            path: path.clone(),
            query: req.uri().query().unwrap_or_default().into(),
            content_type: String::new(),
            body: Value::Null,
        });
        let Some(to) = to else {
            return Some(json_response(
                404,
                json!({"kind": "Status", "code": 404, "message": "pod not found"}),
            ));
        };
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            use tokio_tungstenite::tungstenite::Message;
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let [lo, hi] = port.to_le_bytes();
            for channel in [0u8, 1] {
                if ws
                    .send(Message::binary(vec![channel, lo, hi]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let Ok(mut tcp) = tokio::net::TcpStream::connect(to).await else {
                let _ = ws.close(None).await;
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                            if tcp.write_all(&data[1..]).await.is_err() { break }
                        }
                        Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        _ => break,
                    },
                    n = tcp.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut frame = Vec::with_capacity(n + 1);
                            frame.push(0);
                            frame.extend_from_slice(&buf[..n]);
                            if ws.send(Message::binary(frame)).await.is_err() { break }
                        }
                    },
                }
            }
            let _ = ws.close(None).await;
        });
        Some(
            Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
                )
                .header("sec-websocket-protocol", "v4.channel.k8s.io")
                .body(Full::new(Bytes::new()).boxed())
                .expect("response"),
        )
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path().ends_with("/portforward")
            && req.headers().contains_key("sec-websocket-key")
        {
            return self.portforward(req).unwrap_or_else(|| {
                json_response(
                    400,
                    json!({"kind": "Status", "code": 400, "message": "bad portforward request"}),
                )
            });
        }
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_yaml::from_slice(&bytes)
                    .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            })
        };
        let mut s = self.state.lock().expect("state");
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if let Some(group) = path
            .strip_prefix("/apis/")
            .and_then(|p| p.split('/').next())
            && s.missing_groups.iter().any(|g| g == group)
        {
            return not_found(&path);
        }
        let Some(t) = parse(&path) else {
            return not_found(&path);
        };
        let ns = t.namespace.clone().unwrap_or_default();
        match (method.as_str(), &t.name) {
            ("GET", None) if query_param(&query, "watch").as_deref() == Some("true") => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                s.watches.push(tx);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
                    .expect("response")
            }
            ("GET", None) => {
                let labels = query_param(&query, "labelSelector");
                let fields = query_param(&query, "fieldSelector");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((p, pl, ons, _), _)| {
                        *p == t.prefix && *pl == t.plural && (t.namespace.is_none() || *ons == ns)
                    })
                    .map(|(_, o)| o.clone())
                    .filter(|o| matches_selector(o, labels.as_deref(), "labels"))
                    .filter(|o| matches_selector(o, fields.as_deref(), "fields"))
                    .collect();
                json_response(
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => {
                match s
                    .objects
                    .get(&(t.prefix.clone(), t.plural.clone(), ns, name.clone()))
                {
                    Some(o) => json_response(200, o.clone()),
                    None => not_found(&path),
                }
            }
            ("PATCH", Some(name)) => {
                let key = (t.prefix.clone(), t.plural.clone(), ns, name.clone());
                s.version += 1;
                let version = s.version.to_string();
                if t.status {
                    let Some(o) = s.objects.get_mut(&key) else {
                        return not_found(&path);
                    };
                    o["status"] = body["status"].clone();
                    o["metadata"]["resourceVersion"] = json!(version);
                    return json_response(200, o.clone());
                }
                let mut stored = body;
                if let Some(existing) = s.objects.get(&key) {
                    let want = stored["metadata"]["resourceVersion"].as_str();
                    if want.is_some() && want != existing["metadata"]["resourceVersion"].as_str() {
                        return json_response(
                            409,
                            json!({"kind": "Status", "code": 409, "reason": "Conflict", "message": "the object has been modified"}),
                        );
                    }
                }
                stored["metadata"]["resourceVersion"] = json!(version);
                s.objects.insert(key, stored.clone());
                json_response(200, stored)
            }
            ("DELETE", Some(name)) => {
                match s
                    .objects
                    .remove(&(t.prefix.clone(), t.plural.clone(), ns, name.clone()))
                {
                    Some(o) => json_response(200, o),
                    None => not_found(&path),
                }
            }
            ("POST", None) if t.plural != "tokenreviews" => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let key = (t.prefix.clone(), t.plural.clone(), ns, name);
                if s.objects.contains_key(&key) {
                    return json_response(
                        409,
                        json!({"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "already exists"}),
                    );
                }
                s.version += 1;
                let mut stored = body;
                stored["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(key, stored.clone());
                json_response(201, stored)
            }
            ("PUT", Some(name)) => {
                let key = (t.prefix.clone(), t.plural.clone(), ns, name.clone());
                let Some(existing) = s.objects.get(&key) else {
                    return not_found(&path);
                };
                if body["metadata"]["resourceVersion"] != existing["metadata"]["resourceVersion"] {
                    return json_response(
                        409,
                        json!({"kind": "Status", "code": 409, "reason": "Conflict", "message": "the object has been modified"}),
                    );
                }
                s.version += 1;
                let mut stored = body;
                stored["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(key, stored.clone());
                json_response(200, stored)
            }
            ("POST", None) if t.plural == "tokenreviews" => json_response(
                201,
                json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": {"authenticated": false}}),
            ),
            _ => not_found(&path),
        }
    }
}
