//! Benchmarks of rdma-rpc: see `benches/`.
