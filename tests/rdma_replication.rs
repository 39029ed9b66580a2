//! Replication over RDMA, on a real soft-RoCE device (run by `scripts/rxe-test` in a QEMU guest
//! whose kernel has btrfs and loop): real `btrfs send`/`btrfs receive` on two loop-device
//! filesystems, full then incremental, through `rdma-rpc serve --listen rdma://…` and
//! `rdma-rpc replicate … rdma://… --no-fallback`; replicas checked file by file. `#[ignore]`d
//! outside the guest (run without RDMA_TEST_DEVICE they fail); skips, saying why, when btrfs
//! cannot be used.

mod common;

use common::replication::{LoopBtrfs, ServeProcess, rdma_rpc, skip_without_btrfs, tree_digest, write_tree};

#[test]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
fn rdma_replicates_btrfs_snapshots_full_then_incremental() {
    let (Ok(_device), Ok(addr)) = (std::env::var("RDMA_TEST_DEVICE"), std::env::var("RDMA_TEST_ADDR")) else {
        panic!(
            "RDMA_TEST_DEVICE / RDMA_TEST_ADDR are unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)"
        );
    };
    if skip_without_btrfs("rdma_replicates_btrfs_snapshots_full_then_incremental") {
        return;
    }
    let (src, dst) = (LoopBtrfs::new(256), LoopBtrfs::new(256));
    let data = src.subvolume("data");
    write_tree(&data, 21, 8, 512 << 10);
    let s1 = src.snapshot("data", "s1");
    let server = ServeProcess::start_on("rdma", &addr, 0, &dst.spec());

    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url(), "--no-fallback"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("transport: rdma\n"), "{out}");
    assert!(out.contains("sent data@s1 (full)"), "{out}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s1")), tree_digest(&s1));

    write_tree(&data, 22, 4, 1 << 20);
    std::fs::remove_file(data.join("empty")).expect("rm");
    let s2 = src.snapshot("data", "s2");
    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url(), "--no-fallback", "--compress"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("transport: rdma\n") && out.contains("sent data@s1 -> @s2 (incremental)"), "{out}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s2")), tree_digest(&s2));
}

#[test]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
fn rdma_demo_replicates_over_rdma_cuts_resumes_and_verifies() {
    assert!(
        std::env::var("RDMA_TEST_DEVICE").is_ok(),
        "RDMA_TEST_DEVICE / RDMA_TEST_ADDR are unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let work_dir = work.path().to_str().expect("utf-8");
    let (ok, out, err) = rdma_rpc(&["demo", "--dataset-mib", "64", "--calls", "200", "--work-dir", work_dir]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("an active RoCE device's address: RDMA"), "{out}");
    assert!(out.contains("over 2 rdma connections"), "the cut and the resume both ran over RDMA: {out}");
    assert!(out.contains("verified: the replica's 4 streams equal the source's") && out.contains("demo OK"), "{out}");
}
