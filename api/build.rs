//! Generates the xDS, CA and L7 protobuf types (prost) and their gRPC client
//! and server stubs (tonic) from `proto/`. The protos are parsed by `protox`
//! (pure Rust, with the well-known `google/protobuf/*` types built in), so the
//! build needs no system `protoc` and no include files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/discovery.proto",
        "proto/ca.proto",
        "proto/l7.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
