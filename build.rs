//! Compiles `proto/*.proto` (and the test service in `tests/proto/`) with protox — no system
//! `protoc` — into prost messages with `bytes` fields as `Bytes`, plus, for every service, a typed
//! client and a server trait (see `codegen/service.rs`).

#[path = "codegen/service.rs"]
mod service;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tests/proto");
    println!("cargo:rerun-if-changed=codegen");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    compile(&["proto/rpc.proto", "proto/echo.proto", "proto/replication.proto"], &["proto"], &out_dir)?;
    compile(&["tests/proto/test_service.proto"], &["tests/proto", "proto"], &out_dir)?;
    Ok(())
}

fn compile(files: &[&str], includes: &[&str], out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(files, includes)?;
    prost_build::Config::new()
        .bytes(["."])
        // A BTreeMap is 24 bytes against a HashMap's 48: every decoded `Frame` and session
        // `Event` holds a call header, and under 128 bytes moving them is no `memcpy` call. It
        // also encodes metadata in one order.
        .btree_map([".rdmarpc.rpc.CallHeader.metadata"])
        .service_generator(Box::new(service::ServiceGen))
        .out_dir(out_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
