//! Deadlines and cancellation over TCP: the caller gets `DeadlineExceeded` or drops the call, and
//! in both cases the server's handler is aborted (it stops sending), while the connection goes on.

mod common;

use std::time::Duration;

use common::calculator::pb::{CalculatorClient, CountRequest, Numbers};
use common::{TestServer, eventually};
use rdma_rpc::Code;

#[tokio::test]
async fn an_expired_deadline_fails_the_call_and_stops_the_server() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await.with_timeout(Duration::from_millis(300)));
    let mut replies = client.count(&CountRequest { upto: 1000, delay_ms: 50 }).await.expect("open");
    let err = loop {
        match replies.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream cannot finish before its deadline"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code, Code::DeadlineExceeded);
    eventually("server handler aborted", || server.probe.aborted() == 1).await;
    let sent = server.probe.sent();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.probe.sent(), sent, "the server kept working after the deadline");
    assert!(sent < 1000);
    // The connection is fine.
    let sum = client.add(&Numbers { values: vec![2, 2] }).await.expect("add after deadline");
    assert_eq!(sum.total, 4);
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_the_server() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let mut replies = client.count(&CountRequest { upto: 1000, delay_ms: 20 }).await.expect("open");
    replies.message().await.expect("first").expect("one item");
    drop(replies);
    eventually("server handler aborted", || server.probe.aborted() == 1).await;
    let sent = server.probe.sent();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.probe.sent(), sent);
    assert_eq!(client.add(&Numbers { values: vec![1] }).await.expect("add").total, 1);
}

#[tokio::test]
async fn dropping_a_pending_future_cancels_the_call() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    // A unary-shaped wait that is dropped mid-flight by a timeout.
    let call = async {
        let mut replies = client.count(&CountRequest { upto: 1000, delay_ms: 20 }).await?;
        while replies.message().await?.is_some() {}
        Ok::<_, rdma_rpc::Status>(())
    };
    assert!(tokio::time::timeout(Duration::from_millis(100), call).await.is_err());
    eventually("server handler aborted", || server.probe.aborted() == 1).await;
}

#[tokio::test]
async fn a_cancelled_request_stream_reaches_the_handler() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let (mut requests, replies) = client.total().await.expect("open");
    requests.send(&Numbers { values: vec![1] }).await.expect("send");
    drop(replies); // cancels: the server's handler sees the call end
    let err = async {
        loop {
            requests.send(&Numbers { values: vec![1] }).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), rdma_rpc::Status>(())
    };
    let status = tokio::time::timeout(Duration::from_secs(5), err).await.expect("sends stop").expect_err("cancelled");
    assert_eq!(status.code, Code::Cancelled, "{status}");
}
