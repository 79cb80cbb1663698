//! Generates the Rust code for the mesh's protobuf contracts.
//!
//! protoc comes from `protoc-bin-vendored` and is handed to prost explicitly, so a build needs no
//! system protoc and never depends on `PROTOC` in the environment.

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const COMMON: &str = "proto/mesh/common.proto";
const SERVICES: [&str; 4] = [
    "proto/mesh/identity.proto",
    "proto/mesh/discovery.proto",
    "proto/mesh/tunnel.proto",
    "proto/mesh/tap.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let includes = [
        PathBuf::from(PROTO_ROOT),
        protoc_bin_vendored::include_path()?,
    ];

    // `common` is compiled on its own, then treated as an external package by the others. The
    // crate exposes each `v1` package flat (`mesh_api::discovery::Update`, not
    // `mesh_api::mesh::discovery::v1::Update`), so prost's default relative paths
    // (`super::super::common::v1::SocketAddr`) would not resolve; an extern path pins them to
    // `crate::common` instead.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_with_config(config(&protoc), &[PathBuf::from(COMMON)], &includes)?;

    let services = SERVICES.map(PathBuf::from);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".mesh.common.v1", "crate::common")
        .compile_with_config(config(&protoc), &services, &includes)?;

    Ok(())
}

fn config(protoc: &std::path::Path) -> prost_build::Config {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config
}
