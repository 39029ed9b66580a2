//! Replication under faults, in-process against a real btrfs target on a loop device: a bit
//! flipped in flight (by a fault-injecting transport on the server) is caught at its chunk,
//! nothing corrupt reaches `btrfs receive`, and the retry succeeds; bad requests (shell
//! metacharacters, unknown filesystems, a resume for a stream that is not there) fail clearly
//! and change nothing on the target.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::replication::{LoopBtrfs, skip_without_btrfs, tree_digest, write_tree};
use rdma_rpc::Code;
use rdma_rpc::pb::replication::{
    FilesystemVersion, ReceiveReq, ReceiveStreamItem, ReplicationClient, receive_stream_item,
};
use rdma_rpc::replication::endpoint::Endpoint;
use rdma_rpc::replication::progress::Progress;
use rdma_rpc::replication::replicate::{ReplicateOptions, replicate};
use rdma_rpc::replication::service::ReplicationService;
use rdma_rpc::rpc::{Client, ConnectOptions, ConnectionConfig, Router, Server};
use rdma_rpc::transport::fault::{FaultyTransport, FlipPlan};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};

/// Serves replication into `target`, every connection wrapped by `plan`'s fault injector.
async fn faulty_server(target: String, plan: FlipPlan) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut router = Router::default();
    router.add(ReplicationService::new(Endpoint::parse(&target).expect("endpoint")).server());
    let mut server = Server::new(router, ConnectionConfig::default());
    tokio::spawn(async move {
        while let Ok(connection) = listener.accept().await {
            server.serve_connection(FaultyTransport::new(connection, plan.clone()));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_is_caught_nothing_corrupt_is_applied_and_the_retry_succeeds() {
    if skip_without_btrfs("a_flipped_bit_is_caught_nothing_corrupt_is_applied_and_the_retry_succeeds") {
        return;
    }
    let (src, dst) = (LoopBtrfs::new(300), LoopBtrfs::new(300));
    let data = src.subvolume("data");
    write_tree(&data, 5, 12, 1 << 20);
    let s1 = src.snapshot("data", "s1");
    let flipped = Arc::new(AtomicUsize::new(0));
    let plan = FlipPlan { min_len: 64 << 10, nth: 3, times: 1, flipped: flipped.clone() };
    let addr = faulty_server(dst.spec(), plan).await;

    let source = Arc::new(Endpoint::parse(&src.spec()).expect("source"));
    let options = ReplicateOptions { first_backoff: Duration::from_millis(50), ..ReplicateOptions::default() };
    let report = replicate(source, &addr.to_string(), &ConnectOptions::default(), &options, &Progress::default())
        .await
        .expect("replicates after one retry");
    assert_eq!(flipped.load(Ordering::SeqCst), 1, "the injector flipped one bit");
    assert_eq!(report.attempts, 2, "{report:?}");
    assert!(report.retried[0].contains("CRC32C"), "the corrupt chunk was named: {:?}", report.retried);
    assert_eq!(tree_digest(&dst.snaps().join("data@s1")), tree_digest(&s1));
}

async fn client(addr: std::net::SocketAddr) -> ReplicationClient<TcpConnection> {
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    ReplicationClient::new(Client::connect(connection, ConnectionConfig::default()).await.expect("handshake"))
}

/// Opens a Receive with `header`, sends one small chunk-less end, returns the call's status code.
async fn receive_with(client: &ReplicationClient<TcpConnection>, header: ReceiveReq) -> Code {
    let (mut sender, receiver) = client.receive().await.expect("call");
    let _ = sender.send(&ReceiveStreamItem { item: Some(receive_stream_item::Item::Header(header)) }).await;
    let _ = sender.finish().await;
    receiver.response().await.expect_err("refused").code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_clearly_and_change_nothing() {
    if skip_without_btrfs("bad_requests_fail_clearly_and_change_nothing") {
        return;
    }
    let dst = LoopBtrfs::new(200);
    let plan = FlipPlan { min_len: usize::MAX, nth: 1, times: 0, flipped: Arc::default() };
    let addr = faulty_server(dst.spec(), plan).await;
    let client = client(addr).await;
    let version = |name: &str| FilesystemVersion { name: name.into(), guid: 42, ..Default::default() };

    let evil = ReceiveReq { filesystem: "x; touch /tmp/pwned".into(), to: Some(version("s1")), ..Default::default() };
    assert_eq!(receive_with(&client, evil).await, Code::InvalidArgument);
    let evil_snap = ReceiveReq { filesystem: "data".into(), to: Some(version("$(reboot)")), ..Default::default() };
    assert_eq!(receive_with(&client, evil_snap).await, Code::InvalidArgument);
    let option = ReceiveReq { filesystem: "-o".into(), to: Some(version("s1")), ..Default::default() };
    assert_eq!(receive_with(&client, option).await, Code::InvalidArgument);
    let resume =
        ReceiveReq { filesystem: "data".into(), to: Some(version("s1")), resume_offset: 4096, ..Default::default() };
    assert_eq!(receive_with(&client, resume).await, Code::FailedPrecondition, "btrfs cannot resume part-way");
    let truncated = ReceiveReq { filesystem: "data".into(), to: Some(version("s1")), ..Default::default() };
    assert_eq!(receive_with(&client, truncated).await, Code::DataLoss, "a stream with no end is truncated");
    assert!(dst.listing().is_empty(), "nothing was created: {:?}", dst.listing());

    let err = client
        .list_filesystem_versions(&rdma_rpc::pb::replication::ListFilesystemVersionsReq { filesystem: "a|b".into() })
        .await
        .expect_err("bad name");
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("shell metacharacters"), "{}", err.message);

    // The same connection still serves good calls.
    let versions = client
        .list_filesystem_versions(&rdma_rpc::pb::replication::ListFilesystemVersionsReq { filesystem: "data".into() })
        .await
        .expect("still serving");
    assert!(versions.versions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_filesystems_and_stale_resume_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Arc::new(Endpoint::parse(&format!("dir:{}", dir.path().join("src").display())).expect("source"));
    let target = format!("dir:{}", dir.path().join("dst").display());
    let plan = FlipPlan { min_len: usize::MAX, nth: 1, times: 0, flipped: Arc::default() };
    let addr = faulty_server(target, plan).await;

    let options = ReplicateOptions { filesystems: vec!["nope".into()], ..ReplicateOptions::default() };
    let err = replicate(source, &addr.to_string(), &ConnectOptions::default(), &options, &Progress::default())
        .await
        .expect_err("unknown filesystem");
    assert!(!err.is_retryable() && err.to_string().contains("no filesystem \"nope\""), "{err}");

    let client = client(addr).await;
    let stale = ReceiveReq {
        filesystem: "data".into(),
        to: Some(FilesystemVersion { name: "s9".into(), guid: 9, ..Default::default() }),
        resume_offset: 1 << 20,
        ..Default::default()
    };
    assert_eq!(receive_with(&client, stale).await, Code::FailedPrecondition);
    assert!(!dir.path().join("dst/data/s9.stream.partial").exists(), "nothing created");
}
