//! The `ambit-cni` executable, called by the container runtime as the CNI
//! spec says: `CNI_COMMAND` and the other `CNI_*` variables in the
//! environment, the network configuration on stdin; the result (or an
//! error object, with a non-zero exit status) on stdout.

use std::io::Read;
use std::process::ExitCode;

use ambit_cni::spec::{CniError, Command, codes};

fn main() -> ExitCode {
    let var = |name: &str| std::env::var(name).ok();
    let outcome = match var("CNI_COMMAND").as_deref().map(Command::parse) {
        Some(Some(command)) => {
            let mut stdin = String::new();
            match std::io::stdin().read_to_string(&mut stdin) {
                Ok(_) => ambit_cni::plugin::run(command, var, &stdin),
                Err(e) => Err(CniError::new(
                    codes::IO_FAILURE,
                    format!("reading stdin: {e}"),
                )),
            }
        }
        Some(None) | None => Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!(
                "CNI_COMMAND={:?}: want ADD, DEL, CHECK or VERSION",
                var("CNI_COMMAND").unwrap_or_default()
            ),
        )),
    };
    match outcome {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            print!("{}", serde_json::to_string(&e).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}
