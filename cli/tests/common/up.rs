//! `ambit up -f DIR` in its own process, as a user runs it, and `ambit`
//! commands run against it from the test (a second terminal).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ambit up`: interrupted (Ctrl-C) and its directory removed
/// when dropped.
pub struct Up {
    child: Child,
    /// The run's name (`ambit-<pid>`), for `--run`.
    pub run: String,
    dir: PathBuf,
}

impl Up {
    /// Writes `yaml` into a fresh directory (named after `name`) and runs
    /// `ambit up -f` on it until the cluster is up.
    pub fn start(name: &str, yaml: &str) -> Up {
        let dir = std::env::temp_dir().join(format!("ambit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("cluster.yaml"), yaml).expect("yaml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ambit"))
            .args(["up", "-f"])
            .arg(&dir)
            .env("AMBIT_BIN", env!("CARGO_BIN_EXE_ambit"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ambit up");
        let stdout = child.stdout.take().expect("stdout");
        let up = Up {
            run: format!("ambit-{}", child.id()),
            child,
            dir,
        };
        // "local cluster up" comes right after cluster.json is written.
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("ambit up ended early:\n{}", seen.join("\n")))
                .expect("read");
            seen.push(line.clone());
            if line.starts_with("local cluster up") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        up
    }

    /// `cluster.json`.
    pub fn info(&self) -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(format!("/run/ambit/{}/cluster.json", self.run)).expect("cluster.json"),
        )
        .expect("parse cluster.json")
    }

    /// A field of pod `key` in `cluster.json`.
    pub fn pod_field(&self, key: &str, field: &str) -> String {
        let info = self.info();
        info["pods"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["key"] == key))
            .and_then(|p| p[field].as_str())
            .unwrap_or_else(|| panic!("no {field} for pod {key} in {info}"))
            .to_string()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ambit ARGS`: exit code and stdout (then stderr, marked).
pub fn ambit(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .expect("run ambit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    let err = if err.is_empty() {
        String::new()
    } else {
        format!("\n[stderr]\n{err}")
    };
    (out.status.code().unwrap_or(-1), format!("{text}{err}"))
}
