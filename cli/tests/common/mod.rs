//! Helpers shared by the local-cluster test binaries.

/// Fails with a clear message unless running as root.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (network namespaces, eBPF): run as root; CI does");
    }
}

/// Points `$AMBIT_BIN` at the built `ambit` binary, so pod processes written
/// `command: [ambit, ...]` run it rather than the test harness.
pub fn set_ambit_bin() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: set once, before any pod process is started; every writer
        // would write the same value.
        unsafe {
            std::env::set_var("AMBIT_BIN", env!("CARGO_BIN_EXE_ambit"))
        };
    });
}
