//! Allezon's protobuf messages and gRPC stubs, generated from `proto/`.
//!
//! This is the only crate that runs code generation; every service depends on
//! it instead of calling `include_proto!` itself.

/// Version 1 of the internal API.
pub mod v1 {
    tonic::include_proto!("allezon.v1");
}

/// The encoded `FileDescriptorSet` of every message and service, for gRPC
/// server reflection (`grpcurl list`).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("allezon_descriptor");
