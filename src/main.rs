//! The `rdma-rpc` command.
fn main() {}
