//! ztunnel's side of the enrolment channel (Istio's ZDS, docs/wire.md
//! appendix A): ztunnel connects to the node agent as the client, says
//! hello, and acks every request; after `snapshot_sent` it releases every pod
//! the snapshot did not mention. While disconnected it reports not ready.
//! The transport is [`ambit_proxy_core::zds`].

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::zds::{Ack, Payload, Version, WorkloadRequest, WorkloadResponse, ZdsHello};
use ambit_proxy_core::netns::Netns;
use ambit_proxy_core::zds::ZdsSocket;
use tracing::{info, warn};

use crate::proxy::Ztunnel;

fn ack(error: Option<String>) -> WorkloadResponse {
    WorkloadResponse {
        ack: Some(Ack {
            error: error.unwrap_or_default(),
        }),
    }
}

/// Handles one request; returns the ack's error text (None = success).
fn handle(
    z: &Ztunnel,
    req: WorkloadRequest,
    mut fds: Vec<OwnedFd>,
    seen: &mut HashSet<String>,
) -> Option<String> {
    match req.payload {
        Some(Payload::Add(add)) => {
            if fds.len() != 1 {
                return Some(format!(
                    "add {}: expected exactly one netns fd, got {}",
                    add.uid,
                    fds.len()
                ));
            }
            let fd = fds.remove(0);
            seen.insert(add.uid.clone());
            let netns = Netns::from_file(File::from(fd), format!("zds:{}", add.uid));
            z.add_pod(&add.uid, netns).err().map(|e| e.to_string())
        }
        _ if !fds.is_empty() => Some("only add may carry a file descriptor".into()),
        Some(Payload::Keep(keep)) => {
            seen.insert(keep.uid.clone());
            (!z.enrolled().contains(&keep.uid)).then(|| format!("keep {}: not enrolled", keep.uid))
        }
        Some(Payload::Del(del)) => {
            seen.remove(&del.uid);
            z.remove_pod(&del.uid).err().map(|e| e.to_string())
        }
        Some(Payload::SnapshotSent(_)) => {
            for uid in z.enrolled() {
                if !seen.contains(&uid)
                    && let Err(e) = z.remove_pod(&uid)
                {
                    warn!(uid, error = %e, "releasing a pod missing from the snapshot");
                }
            }
            z.prune_capture();
            z.set_zds_connected(true);
            None
        }
        None => Some("empty request".into()),
    }
}

/// ztunnel's side: connects to `path` (retrying with backoff up to 15 s), then
/// serves requests until the connection ends, and reconnects. Runs on its own
/// thread; `rt` is the runtime the pods' listeners are spawned on.
pub fn run_client(
    z: Arc<Ztunnel>,
    path: PathBuf,
    rt: tokio::runtime::Handle,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _guard = rt.enter();
        z.set_zds_connected(false);
        let mut backoff = Duration::from_millis(10);
        loop {
            if z.is_shutting_down() {
                return;
            }
            let sock = match ZdsSocket::connect(&path) {
                Ok(s) => s,
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                    continue;
                }
            };
            backoff = Duration::from_millis(10);
            info!(path = %path.display(), "ZDS connected");
            if let Err(e) = sock.send(
                &ZdsHello {
                    version: Version::V1 as i32,
                },
                None,
            ) {
                warn!(error = %e, "ZDS hello failed");
                continue;
            }
            let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
            let mut seen = HashSet::new();
            loop {
                if z.is_shutting_down() {
                    return;
                }
                match sock.recv::<WorkloadRequest>() {
                    Ok(Some((req, fds))) => {
                        let err = handle(&z, req, fds, &mut seen);
                        if let Some(e) = &err {
                            warn!(error = %e, "ZDS request failed");
                        }
                        if sock.send(&ack(err), None).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        warn!(error = %e, "ZDS receive failed");
                        break;
                    }
                }
            }
            z.set_zds_connected(false);
            info!("ZDS disconnected; not ready until it is back");
        }
    })
}
