//! `ambit completion SHELL` (no root needed): the script names every
//! subcommand and is valid for the shell that runs it (bash checked with
//! `bash -n`).

use std::process::Command;

fn completion(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["completion", shell])
        .output()
        .expect("run ambit completion");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completions_cover_every_subcommand() {
    let bash = completion("bash");
    for sub in [
        "demo",
        "up",
        "analyze",
        "waypoint",
        "echo",
        "ztunnel",
        "completion",
    ] {
        assert!(bash.contains(sub), "{sub} missing from the bash completion");
    }
    let script = std::env::temp_dir().join(format!("ambit-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &bash).expect("write");
    let checked = Command::new("bash").arg("-n").arg(&script).status();
    let _ = std::fs::remove_file(&script);
    assert!(
        checked.expect("bash").success(),
        "bash -n rejects the script"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(completion(shell).contains("analyze"), "{shell}");
    }
}
