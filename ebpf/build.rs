//! Compiles `bpf/*.c` into BPF objects with clang. The objects are embedded in
//! the crate with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("ambit-ebpf: unsupported target arch {other}"),
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // One object today; add names here as programs are split out.
    let programs: &[&str] = &["capture"];
    for prog in programs {
        let src = format!("bpf/{prog}.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{prog}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c", &src, "-o",
            ])
            .arg(&obj)
            .arg(format!("-I/usr/include/{multiarch}"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "ambit-ebpf: cannot run {clang}: {e}. Install clang, llvm and libbpf-dev \
                     (`apt-get install clang llvm libbpf-dev`, done by .ci/deps)"
                )
            });
        assert!(
            status.success(),
            "ambit-ebpf: clang failed to compile {src}"
        );
    }
    println!("cargo:rerun-if-env-changed=CLANG");
}
