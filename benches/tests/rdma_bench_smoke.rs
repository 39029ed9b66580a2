//! `rpc-bench --rdma ADDR --quick` on a real RDMA device: every RDMA part of the bench (rdma-rpc
//! over RDMA, the bare transport's echo, streams, allocations, the table by layer) keeps running,
//! as `rpc-bench --quick` does for the TCP parts in `scripts/test`. The figures of a smoke run mean
//! nothing; this checks that each row is there and that the run succeeded.
//!
//! Needs `RDMA_TEST_ADDR` (`scripts/rxe-test` sets it); `#[ignore]`d elsewhere.

use std::process::Command;

#[test]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
fn rdma_rows_of_rpc_bench_run() {
    let Ok(addr) = std::env::var("RDMA_TEST_ADDR") else {
        panic!("RDMA_TEST_ADDR is unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)");
    };
    let output = Command::new(env!("CARGO_BIN_EXE_rpc-bench"))
        .args(["--rdma", &addr, "--quick", "--sizes", "64", "--perftest-lat-us", "10", "--perftest-bw-mbs", "100"])
        .output()
        .expect("rpc-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rpc-bench failed ({}):\n{stdout}\n{stderr}", output.status);
    for expected in [
        "| 64 B | 1 | rdma-rpc rdma |",
        "| 64 B | 64 | rdma-rpc rdma |",
        "| 64 B | 1 | raw rdma transport |",
        "| 64 B | 1 | raw rdma transport run-to-completion |",
        "| 64 B | 1 | rdma-rpc rdma inline |",
        "### RDMA round trip by layer",
        "| rdma-rpc rdma | 1020 KiB |",
        "| rdma-rpc rdma | 64 B |",
        "RDMA unary p50, 64 B, 1 in flight ÷ perftest round trip",
        "RDMA stream one way ÷ ib_write_bw",
    ] {
        assert!(stdout.contains(expected), "rpc-bench's report lacks {expected:?}:\n{stdout}");
    }
}
