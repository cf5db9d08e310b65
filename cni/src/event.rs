//! What the plugin tells the node agent, and the agent's server for it: one
//! JSON request and one JSON reply per connection on a unix stream socket
//! (Istio's istio-cni posts the same facts to its node agent over a unix
//! socket). The agent answers only after the pod is enrolled (or found not
//! to be in the mesh), so a pod's containers never start before capture
//! is in place.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Where the plugin finds the agent unless its config says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/cni.sock";

/// How long the plugin waits for the agent's answer (enrolment included).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One pod event from the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// The sandbox's container id.
    pub container_id: String,
    /// Its network namespace's path (empty on a DEL after it went away).
    pub netns: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The IPs the previous plugins gave it.
    pub ips: Vec<String>,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    /// The event was handled.
    pub ok: bool,
    /// The pod is (ADD, CHECK) in the mesh and enrolled.
    pub enrolled: bool,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub message: String,
}

/// Why the plugin could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Nothing listens, or the connection broke.
    #[error("node agent at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The answer did not parse.
    #[error("node agent at {path} answered {answer:?}: {reason}")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What came back.
        answer: String,
        /// Why it is not a reply.
        reason: String,
    },
}

/// Sends `event` to the agent at `path` and waits for its reply.
pub fn send(path: &Path, event: &PodEvent) -> Result<AgentReply, EventError> {
    let unreachable = |source| EventError::Unreachable {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(event).map_err(|e| unreachable(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    serde_json::from_str(answer.trim()).map_err(|e| EventError::BadReply {
        path: path.to_path_buf(),
        answer,
        reason: e.to_string(),
    })
}

/// What the node agent does with an event.
pub trait PodEvents: Send + Sync + 'static {
    /// A pod's sandbox was created: enrol it if it is in the mesh. `Ok(true)`:
    /// enrolled; `Ok(false)`: not in the mesh.
    fn add(&self, event: &PodEvent) -> Result<bool, String>;
    /// The sandbox is going away: release it (succeeds when unknown).
    fn del(&self, event: &PodEvent) -> Result<(), String>;
    /// Is the pod enrolled if it should be? `Ok(enrolled)`.
    fn check(&self, event: &PodEvent) -> Result<bool, String>;
}

/// The agent's event server: one thread accepting, one per connection.
#[derive(Debug)]
pub struct EventServer {
    path: PathBuf,
}

impl EventServer {
    /// Listens on `path` (replacing a stale socket) and hands every event to
    /// `handler` until the process exits or the server is dropped (the
    /// socket file is removed; the accept thread ends at its next connection).
    pub fn start(path: &Path, handler: Arc<dyn PodEvents>) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let owned = path.to_path_buf();
        std::thread::Builder::new()
            .name("cni-events".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if !owned.exists() {
                        return;
                    }
                    match conn {
                        Ok(stream) => {
                            let handler = handler.clone();
                            let _ = std::thread::Builder::new()
                                .name("cni-event".into())
                                .spawn(move || serve_one(stream, handler.as_ref()));
                        }
                        Err(e) => {
                            warn!(error = %e, "CNI event accept failed");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(EventServer {
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EventServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Wake the accept loop so it sees the socket is gone.
        let _ = UnixStream::connect(&self.path);
    }
}

fn handle(handler: &dyn PodEvents, event: &PodEvent) -> AgentReply {
    let result = match event.command.as_str() {
        "ADD" => handler.add(event),
        "DEL" => handler.del(event).map(|()| false),
        "CHECK" => handler.check(event),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(enrolled) => AgentReply {
            ok: true,
            enrolled,
            message: String::new(),
        },
        Err(message) => AgentReply {
            ok: false,
            enrolled: false,
            message,
        },
    }
}

fn serve_one(stream: UnixStream, handler: &dyn PodEvents) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    if BufReader::new(reader).read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<PodEvent>(line.trim()) {
        Ok(event) => {
            debug!(command = %event.command, pod = %format!("{}/{}", event.pod_namespace, event.pod_name), "CNI event");
            handle(handler, &event)
        }
        Err(e) => AgentReply {
            ok: false,
            enrolled: false,
            message: format!("not a pod event: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let mut stream = stream;
    let _ = stream.write_all(&out);
}
