//! Unary calls over TCP on loopback: the echo service and a generated test service.

mod common;

use bytes::Bytes;
use common::TestServer;
use common::calculator::pb::{CalculatorClient, Numbers};
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};

#[tokio::test]
async fn echo_round_trips_payloads_of_many_sizes() {
    let server = TestServer::start().await;
    let client = EchoClient::new(server.client().await);
    for size in [0usize, 1, 64, 4096, 65_536, 1 << 20] {
        let payload: Bytes = (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        let reply = client.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
        assert_eq!(reply.payload, payload, "size {size}");
    }
    server.stop().await;
}

#[tokio::test]
async fn generated_unary_method_computes() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let sum = client.add(&Numbers { values: vec![1, 2, 3, -10] }).await.expect("add");
    assert_eq!((sum.total, sum.count), (-4, 4));
}
