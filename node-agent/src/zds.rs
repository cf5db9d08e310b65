//! The node agent's side of the enrolment channel (ZDS). It listens on a unix SEQPACKET socket;
//! when its node's ztunnel connects it sends the snapshot (an `add` with the
//! pod's netns fd for each enrolled pod, then `snapshot_sent`), and afterwards
//! one `add` or `del` per enrolment change, each answered by an ack.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Whether the desired set is whole (the pods of the node are known):
    /// until then no snapshot is sent, since a snapshot tells ztunnel that
    /// pods missing from it are gone.
    synced: Arc<AtomicBool>,
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

/// While no snapshot has been sent to a ztunnel: applies the next command
/// (waiting up to `wait`) to the desired set only. False when the agent is
/// to stop.
fn apply_offline(rx: &mpsc::Receiver<Cmd>, desired: &Mutex<Desired>, wait: Duration) -> bool {
    match rx.recv_timeout(wait) {
        Ok(cmd) => apply(cmd, desired, None),
        Err(mpsc::RecvTimeoutError::Timeout) => true,
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
    }
}

impl NodeAgent {
    /// Listens at `path` and serves whichever ztunnel connects; the desired
    /// set is whole from the start (the caller enrols everything itself).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let agent = Self::start_unsynced(path)?;
        agent.mark_synced();
        Ok(agent)
    }

    /// As [`start`](Self::start), but a connecting ztunnel gets its
    /// snapshot only after [`mark_synced`](Self::mark_synced): a node agent
    /// that restarts must not tell ztunnel its pods are gone before it has
    /// listed them (istio-cni waits for its pod cache the same way).
    pub fn start_unsynced(path: &Path) -> std::io::Result<Self> {
        let listener = ZdsListener::bind(path)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let desired = Arc::new(Mutex::new(Desired::new()));
        let synced = Arc::new(AtomicBool::new(false));
        let shared = desired.clone();
        let gate = synced.clone();
        let thread = std::thread::spawn(move || {
            let desired = shared;
            loop {
                // Wait for ztunnel, applying commands to the desired set meanwhile.
                let sock = loop {
                    if !apply_offline(&rx, &desired, Duration::ZERO) {
                        return;
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
                // Hold the snapshot until the desired set is whole.
                let mut logged = false;
                while !gate.load(Ordering::Acquire) {
                    if !logged {
                        debug!(
                            "ztunnel connected; snapshot waits for the node's pods to be listed"
                        );
                        logged = true;
                    }
                    if !apply_offline(&rx, &desired, Duration::from_millis(50)) {
                        return;
                    }
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
            synced,
            thread: Some(thread),
        })
    }

    /// The desired set is whole: a connected or connecting ztunnel gets its
    /// snapshot now.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_api::zds::{Ack, WorkloadResponse};

    /// A ztunnel stand-in: connects, says hello, and returns what it gets.
    fn connect(path: &Path) -> ZdsSocket {
        let sock = ZdsSocket::connect(path).expect("connect");
        sock.send(&ZdsHello { version: 1 }, None).expect("hello");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        sock
    }

    fn next(sock: &ZdsSocket) -> Option<WorkloadRequest> {
        match sock.recv::<WorkloadRequest>() {
            Ok(Some((req, _))) => Some(req),
            _ => None,
        }
    }

    #[test]
    fn no_snapshot_before_the_pods_are_known() {
        let dir = std::env::temp_dir().join(format!("ambit-zds-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("zds.sock");
        let agent = NodeAgent::start_unsynced(&path).expect("agent");
        let sock = connect(&path);
        assert!(
            next(&sock).is_none(),
            "an agent that has not listed its pods sends no snapshot"
        );
        agent.mark_synced();
        let got = next(&sock).expect("snapshot once synced");
        assert!(
            matches!(got.payload, Some(Payload::SnapshotSent(_))),
            "{got:?}"
        );
        sock.send(
            &WorkloadResponse {
                ack: Some(Ack {
                    error: String::new(),
                }),
            },
            None,
        )
        .expect("ack");
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
