//! Unary handlers over TCP, both ways they run: to completion inside the connection's driver (the
//! request came whole with the call and the handler answered when first polled), and in a task of
//! their own once the handler waits. Either way a failure or a panic ends that call only, and a
//! waiting handler is aborted by the call's deadline or the caller's giving up.

mod common;

use std::time::Duration;

use common::calculator::pb::{CalculatorClient, CountRequest, Numbers};
use common::{TestServer, eventually};
use rdma_rpc::Code;

fn wait(upto: u32, delay_ms: u32) -> CountRequest {
    CountRequest { upto, delay_ms }
}

#[tokio::test]
async fn handlers_that_answer_at_once_and_ones_that_wait_both_answer() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    assert_eq!(client.wait(&wait(7, 0)).await.expect("at once").total, 7);
    assert_eq!(client.wait(&wait(9, 20)).await.expect("after waiting").total, 9);
    // A waiting handler does not hold up the connection: calls answered at once overtake it.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.wait(&wait(11, 300)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..100 {
        let sum = client.add(&Numbers { values: vec![i, 1] }).await.expect("add");
        assert_eq!(sum.total, i + 1);
    }
    assert!(!slow.is_finished(), "100 calls took longer than the slow call's 300 ms: the test proves nothing");
    assert_eq!(slow.await.expect("task").expect("slow call").total, 11);
    assert_eq!(server.probe.aborted(), 0);
}

#[tokio::test]
async fn an_error_or_a_panic_ends_that_call_only() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    for delay_ms in [0, 10] {
        let err = client.wait(&wait(0, delay_ms)).await.expect_err("told to fail");
        assert_eq!((err.code, err.message.as_str()), (Code::NotFound, "told to fail"));
        let err = client.wait(&wait(1, delay_ms)).await.expect_err("told to panic");
        assert_eq!(err.code, Code::Internal, "{err}");
        assert!(err.message.contains("panicked"), "{err}");
        // The connection, and the method's next call, go on.
        assert_eq!(client.wait(&wait(5, delay_ms)).await.expect("after the panic").total, 5);
    }
}

#[tokio::test]
async fn a_waiting_handler_is_aborted_at_the_deadline() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let hurried = CalculatorClient::new(client.inner().with_timeout(Duration::from_millis(100)));
    let err = hurried.wait(&wait(3, 10_000)).await.expect_err("cannot finish in time");
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    eventually("server handler aborted", || server.probe.aborted() == 1).await;
    assert_eq!(client.wait(&wait(4, 0)).await.expect("after the deadline").total, 4);
}

#[tokio::test]
async fn giving_up_on_a_waiting_call_aborts_its_handler() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let request = wait(3, 10_000);
    let call = client.wait(&request);
    assert!(tokio::time::timeout(Duration::from_millis(100), call).await.is_err());
    eventually("server handler aborted", || server.probe.aborted() == 1).await;
    assert_eq!(client.wait(&wait(6, 0)).await.expect("after giving up").total, 6);
}
