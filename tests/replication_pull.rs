//! Pull mode: the server's `Send` streams a stored snapshot as checksummed chunks, from the start
//! or from a byte resume token whose prefix it verifies first.

use std::sync::Arc;

use rdma_rpc::pb::replication::{FilesystemVersion, ReplicationClient, SendReq, SendStreamItem, send_stream_item};
use rdma_rpc::replication::chunk::ChunkChecker;
use rdma_rpc::replication::endpoint::{Endpoint, ReceiveSpec};
use rdma_rpc::replication::resume::ByteToken;
use rdma_rpc::replication::service::ReplicationService;
use rdma_rpc::rpc::{Client, ConnectionConfig, Router, Server};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};

fn stored(dir: &std::path::Path, data: &[u8]) -> FilesystemVersion {
    let version = FilesystemVersion { name: "s1".into(), guid: 77, create_txg: 1, ..Default::default() };
    let store = Endpoint::parse(&format!("dir:{}", dir.display())).expect("store");
    let spec = ReceiveSpec { filesystem: "fs".into(), to: version.clone(), ..Default::default() };
    let mut sink = store.receive(&spec).expect("receive");
    sink.write(data).expect("write");
    sink.finish().expect("finish");
    version
}

async fn serve(dir: &std::path::Path) -> ReplicationClient<TcpConnection> {
    let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut router = Router::default();
    let endpoint = Endpoint::parse(&format!("dir:{}", dir.display())).expect("endpoint");
    router.add(ReplicationService::new(endpoint).server());
    let server = Server::new(router, ConnectionConfig::default());
    tokio::spawn(server.serve_tcp(listener, std::future::pending::<()>(), std::time::Duration::ZERO));
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    ReplicationClient::new(Client::connect(connection, ConnectionConfig::default()).await.expect("handshake"))
}

/// Pulls `request`: (used token, expected size, bytes, first offset).
async fn pull(
    client: &ReplicationClient<TcpConnection>,
    request: SendReq,
) -> Result<(bool, u64, Vec<u8>, u64), rdma_rpc::Status> {
    let mut items = client.send(&request).await?;
    let Some(SendStreamItem { item: Some(send_stream_item::Item::Header(header)) }) = items.message().await? else {
        panic!("no header first");
    };
    let mut checker: Option<ChunkChecker> = None;
    let (mut out, mut first) = (Vec::new(), None);
    while let Some(item) = items.message().await? {
        match item.item {
            Some(send_stream_item::Item::Chunk(chunk)) => {
                let checker = checker.get_or_insert_with(|| ChunkChecker::new(chunk.offset, false));
                first.get_or_insert(chunk.offset);
                out.extend_from_slice(&checker.check(chunk).expect("valid chunk"));
            }
            Some(send_stream_item::Item::End(end)) => {
                checker.as_ref().expect("chunks came").finish(&end).expect("digest")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok((header.used_resume_token, header.expected_size, out, first.unwrap_or(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_streams_stored_snapshots_whole_or_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Arc<Vec<u8>> = Arc::new((0..5_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect());
    let version = stored(dir.path(), &data);
    let client = serve(dir.path()).await;

    let request = SendReq { filesystem: "fs".into(), to: Some(version.clone()), ..Default::default() };
    let (used, expected, bytes, first) = pull(&client, request.clone()).await.expect("pull");
    assert_eq!((used, expected, first), (false, data.len() as u64, 0));
    assert_eq!(&bytes, &*data);

    let offset = 1_234_567u64;
    let token = ByteToken { to_guid: 77, from_guid: 0, offset, prefix_crc: crc32c::crc32c(&data[..offset as usize]) };
    let resumed = SendReq { resume_token: token.encode(), ..request.clone() };
    let (used, _, bytes, first) = pull(&client, resumed).await.expect("resumed pull");
    assert!(used);
    assert_eq!(first, offset);
    assert_eq!(&bytes[..], &data[offset as usize..]);

    let wrong = ByteToken { prefix_crc: token.prefix_crc ^ 1, ..token };
    let err = pull(&client, SendReq { resume_token: wrong.encode(), ..request }).await.expect_err("prefix differs");
    assert!(err.message.contains("differs from the partial one"), "{}", err.message);
}
