//! The `rdma-rpc` command line.
