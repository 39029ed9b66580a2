//! 10,000 concurrent unary calls on one TCP connection, every reply checked.

mod common;

use bytes::Bytes;
use common::TestServer;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_unary_calls() {
    let server = TestServer::start().await;
    let client = EchoClient::new(server.client().await);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10_000u32 {
        let client = client.clone();
        calls.spawn(async move {
            let payload = Bytes::from(format!("call {i} {}", "x".repeat((i % 97) as usize)));
            let reply = client.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload);
        });
    }
    let mut done = 0;
    while let Some(result) = calls.join_next().await {
        result.expect("call task");
        done += 1;
    }
    assert_eq!(done, 10_000);
}
