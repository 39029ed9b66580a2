//! Generates the tonic (gRPC) client and server of `proto/echo.proto`, the baseline the bench
//! binary compares rdma-rpc with. protox compiles the file (no system `protoc`); the messages are
//! not generated again but taken from `rdma_rpc::pb::echo` (`extern_path`), so tonic and rdma-rpc
//! encode the very same prost types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/echo.proto");
    let descriptors = protox::compile(["echo.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .extern_path(".rdmarpc.echo", "::rdma_rpc::pb::echo")
        .compile_fds(descriptors)?;
    Ok(())
}
