//! Generates the gRPC code and the descriptor set that server reflection serves.
//!
//! protoc comes from `protoc-bin-vendored`, so `cargo build` needs nothing
//! installed; a `PROTOC` in the environment still wins, for distributions that
//! must use their own.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/allezon/v1/tag.proto",
    "proto/allezon/v1/event.proto",
    "proto/allezon/v1/profile.proto",
    "proto/allezon/v1/aggregate.proto",
    "proto/allezon/v1/id.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("allezon_descriptor.bin"))
        .emit_rerun_if_changed(false)
        .compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
