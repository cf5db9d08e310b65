//! The node agent's side of the enrolment channel (ZDS). It listens on a unix SEQPACKET socket;
//! when its node's ztunnel connects it sends the snapshot (an `add` with the
//! pod's netns fd for each enrolled pod, then `snapshot_sent`), and afterwards
//! one `add` or `del` per enrolment change, each answered by an ack.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use ambit_api::zds::{
    AddWorkload, DelWorkload, Payload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello,
};
use ambit_proxy_core::zds::{ZdsListener, ZdsSocket};
use tracing::{debug, warn};

enum Cmd {
    Add {
        uid: String,
        info: WorkloadInfo,
        netns: PathBuf,
        reply: mpsc::Sender<Result<(), String>>,
    },
    Del {
        uid: String,
        reply: mpsc::Sender<Result<(), String>>,
    },
    Stop,
}

/// One node's agent.
#[derive(Debug)]
pub struct NodeAgent {
    tx: mpsc::Sender<Cmd>,
    /// The pods the agent wants enrolled (what every snapshot carries), shared
    /// with the agent's thread.
    desired: Arc<Mutex<Desired>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn add_request(uid: &str, info: &WorkloadInfo) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: uid.to_string(),
            workload_info: Some(info.clone()),
        })),
    }
}

/// Sends `req` (with the netns fd for adds) and waits for the ack.
fn exchange(sock: &ZdsSocket, req: &WorkloadRequest, netns: Option<&Path>) -> Result<(), String> {
    let file = match netns {
        Some(p) => Some(File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?),
        None => None,
    };
    sock.send(req, file.as_ref().map(|f| f.as_raw_fd()))
        .map_err(|e| format!("sending: {e}"))?;
    loop {
        match sock.recv::<WorkloadResponse>() {
            Ok(Some((resp, _))) => {
                let err = resp.ack.map(|a| a.error).unwrap_or_default();
                return if err.is_empty() { Ok(()) } else { Err(err) };
            }
            Ok(None) => return Err("ztunnel closed the connection".into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("receiving ack: {e}")),
        }
    }
}

/// Pods the agent wants enrolled: what the next snapshot is built from.
type Desired = BTreeMap<String, (WorkloadInfo, PathBuf)>;

fn lock(desired: &Mutex<Desired>) -> std::sync::MutexGuard<'_, Desired> {
    desired.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies one command: to ztunnel when connected (`sock`), and to the desired
/// set. While disconnected it only updates the desired set (the snapshot will
/// carry it). Returns false for `Stop`.
fn apply(cmd: Cmd, desired: &Mutex<Desired>, sock: Option<&ZdsSocket>) -> bool {
    let send = |req: &WorkloadRequest, netns: Option<&Path>| match sock {
        Some(s) => exchange(s, req, netns),
        None => Ok(()),
    };
    match cmd {
        Cmd::Stop => false,
        Cmd::Add {
            uid,
            info,
            netns,
            reply,
        } => {
            let res = send(&add_request(&uid, &info), Some(&netns));
            if res.is_ok() {
                lock(desired).insert(uid, (info, netns));
            }
            let _ = reply.send(res);
            true
        }
        Cmd::Del { uid, reply } => {
            let req = WorkloadRequest {
                payload: Some(Payload::Del(DelWorkload { uid: uid.clone() })),
            };
            let res = send(&req, None);
            lock(desired).remove(&uid);
            let _ = reply.send(res);
            true
        }
    }
}

impl NodeAgent {
    /// Listens at `path` and serves whichever ztunnel connects.
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let listener = ZdsListener::bind(path)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let desired = Arc::new(Mutex::new(Desired::new()));
        let shared = desired.clone();
        let thread = std::thread::spawn(move || {
            let desired = shared;
            loop {
                // Wait for ztunnel, applying commands to the desired set meanwhile.
                let sock = loop {
                    match rx.try_recv() {
                        Ok(cmd) => {
                            if !apply(cmd, &desired, None) {
                                return;
                            }
                        }
                        Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => {}
                    }
                    match listener.accept_timeout(Duration::from_millis(100)) {
                        Ok(Some(s)) => break s,
                        Ok(None) => continue,
                        Err(e) => {
                            warn!(error = %e, "ZDS accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                };
                match sock.recv::<ZdsHello>() {
                    Ok(Some(_)) => {}
                    _ => continue,
                }
                let mut ok = true;
                let snapshot = lock(&desired).clone();
                for (uid, (info, netns)) in &snapshot {
                    if let Err(e) = exchange(&sock, &add_request(uid, info), Some(netns)) {
                        warn!(uid, error = %e, "snapshot add failed");
                        ok &= !e.contains("closed");
                    }
                }
                let snap = WorkloadRequest {
                    payload: Some(Payload::SnapshotSent(SnapshotSent {})),
                };
                if !ok || exchange(&sock, &snap, None).is_err() {
                    continue;
                }
                debug!("ZDS snapshot sent");
                loop {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(cmd) => {
                            if !apply(cmd, &desired, Some(&sock)) {
                                return;
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // ztunnel gone (killed, restarting): wait for the
                            // next one and send it the snapshot.
                            if sock.peer_closed() {
                                debug!("ztunnel disconnected from ZDS");
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(NodeAgent {
            tx,
            desired,
            thread: Some(thread),
        })
    }

    fn call(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Cmd,
    ) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| "node agent stopped".to_string())?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no answer from the node agent".to_string())?
    }

    /// Enrols pod `uid` whose namespace is at `netns`; returns ztunnel's ack.
    pub fn add(&self, uid: &str, info: WorkloadInfo, netns: PathBuf) -> Result<(), String> {
        self.call(|reply| Cmd::Add {
            uid: uid.to_string(),
            info,
            netns,
            reply,
        })
    }

    /// Releases pod `uid`; returns ztunnel's ack. The pod leaves the desired
    /// set even when ztunnel fails the `del`: the next snapshot then omits it
    /// and ztunnel prunes it.
    pub fn del(&self, uid: &str) -> Result<(), String> {
        self.call(|reply| Cmd::Del {
            uid: uid.to_string(),
            reply,
        })
    }

    /// Is `uid` enrolled: acked by ztunnel (or added while ztunnel was away),
    /// and so in every later snapshot?
    pub fn is_enrolled(&self, uid: &str) -> bool {
        lock(&self.desired).contains_key(uid)
    }

    /// Every enrolled uid.
    pub fn enrolled(&self) -> Vec<String> {
        lock(&self.desired).keys().cloned().collect()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
