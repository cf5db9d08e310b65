//! The short-lived loader: a child process that loads `capture.o`, attaches
//! or updates its links and pins everything, then exits. aya 0.14 parses the
//! kernel's BTF (`/sys/kernel/btf/vmlinux`, several MiB) whenever a loader is
//! built, even for objects that need no CO-RE; done in the long-lived ztunnel
//! that parse set its peak memory ~15 MiB above its working size for good.
//! Done here, the child's memory goes back to the system when it exits and
//! ztunnel opens only the pins.
//!
//! The child is the calling binary itself, started with [`LOADER_ARG`] as its
//! first argument; a binary that pins capture through a loader calls
//! [`serve_if_asked`] first thing in `main`.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::CaptureError;
use crate::pins::PinDir;

/// First argument that turns a process into the loader.
pub const LOADER_ARG: &str = "__ambit-ebpf-loader";

/// The child's last stdout line when it found an earlier ztunnel's links.
const REUSED: &str = "reused";
/// The child's last stdout line when it attached the links itself.
const ATTACHED: &str = "attached";
/// Prefix of a child stdout line carrying a warning to log.
const WARNING: &str = "warning\t";

/// If this process was started as the loader, does the load, reports on
/// stdout and exits (status 1, the error on stderr, when it fails).
/// Otherwise returns at once. Call it before anything else in `main`: before
/// logging is set up or a runtime started.
pub fn serve_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(LOADER_ARG.as_ref()) {
        return;
    }
    let rest: Vec<OsString> = args.collect();
    let code = match serve(&rest) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    std::process::exit(code);
}

/// The loader's work: `rest` is `PIN_DIR CGROUP_ROOT SPLICE(0|1)`.
fn serve(rest: &[OsString]) -> Result<(), String> {
    let [pin_dir, cgroup_root, splice] = rest else {
        return Err(format!(
            "usage: {LOADER_ARG} PIN_DIR CGROUP_ROOT 0|1 (got {} arguments)",
            rest.len()
        ));
    };
    let splice = match splice.to_str() {
        Some("0") => false,
        Some("1") => true,
        other => return Err(format!("splice must be 0 or 1, not {other:?}")),
    };
    let pins = PinDir::prepare(Path::new(pin_dir)).map_err(|e| e.to_string())?;
    let loaded = crate::load::load_object(Path::new(cgroup_root), Some(&pins), splice)
        .map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        println!("{WARNING}{w}");
    }
    println!("{}", if loaded.reused { REUSED } else { ATTACHED });
    Ok(())
}

/// How long the loader may take (it takes well under a second): a child stuck
/// in the kernel or on bpffs is killed and start-up fails with an error,
/// instead of ztunnel hanging before it ever reports not ready.
const LOADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for `child`'s exit and output, killing it after `limit`.
fn wait_bounded(child: Child, limit: Duration) -> Result<Output, String> {
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver may be gone after a timeout; nothing to report then.
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("waiting for it: {e}")),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!("no result after {}s; killed", limit.as_secs()))
        }
    }
}

/// Runs `exe` as the loader for the capture pinned at `pin_dir` and waits for
/// it. Returns whether an earlier ztunnel's links were found attached; the
/// child's warnings are logged here.
pub(crate) fn run(
    exe: &Path,
    pin_dir: &Path,
    cgroup_root: &Path,
    splice: bool,
) -> Result<bool, CaptureError> {
    let failed = |detail: String| CaptureError::Loader {
        exe: exe.to_path_buf(),
        detail,
    };
    let child = Command::new(exe)
        .arg(LOADER_ARG)
        .arg(pin_dir)
        .arg(cgroup_root)
        .arg(if splice { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting it: {e}")))?;
    let out = wait_bounded(child, LOADER_TIMEOUT).map_err(failed)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("{}: {}", out.status, stderr.trim())));
    }
    let mut verdict = None;
    for line in stdout.lines() {
        if let Some(w) = line.strip_prefix(WARNING) {
            tracing::warn!("{w}");
        } else if line == REUSED || line == ATTACHED {
            verdict = Some(line == REUSED);
        }
    }
    verdict.ok_or_else(|| {
        failed(format!(
            "exited without a verdict (does its main call ambit_ebpf::loader::serve_if_asked?); stdout: {:?}",
            stdout.trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_malformed_arguments_before_touching_the_kernel() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let e = serve(&args(&["/sys/fs/bpf/x"])).expect_err("too few");
        assert!(e.contains("usage") && e.contains("got 1"), "{e}");
        let e = serve(&args(&["/sys/fs/bpf/x", "/sys/fs/cgroup", "yes"])).expect_err("bad splice");
        assert!(e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn a_loader_that_hangs_is_killed_after_the_limit() {
        let child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let started = std::time::Instant::now();
        let e = wait_bounded(child, Duration::from_millis(200)).expect_err("timed out");
        assert!(e.contains("killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Killed, then reaped by the waiting thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sleep is gone"
        );
    }

    #[test]
    fn a_loader_that_exits_reports_its_output() {
        let child = Command::new("sh")
            .args(["-c", "echo attached"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let out = wait_bounded(child, LOADER_TIMEOUT).expect("finished");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ATTACHED);
    }
}
