//! The `rdma-rpc` command: `serve`, `ping` and `devices`. Everything lives in
//! [`rdma_rpc::cli`]; run `rdma-rpc --help` for the manual.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    rdma_rpc::cli::main()
}
