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

#[tokio::test]
async fn call_metadata_reaches_the_handler() {
    let server = TestServer::start().await;
    let plain = server.client().await;
    let metadata = std::collections::BTreeMap::from([
        ("offset".to_string(), "100".to_string()),
        ("trace-id".to_string(), "4bf92f3577b34da6".to_string()),
    ]);
    let with = CalculatorClient::new(plain.with_options(rdma_rpc::rpc::CallOptions { metadata, timeout: None }));
    let sum = with.add(&Numbers { values: vec![1, 2] }).await.expect("add");
    assert_eq!(sum.total, 103, "the handler read the offset from the call's metadata");
    // Options belong to the handle: the same connection without them carries none.
    let sum = CalculatorClient::new(plain).add(&Numbers { values: vec![1, 2] }).await.expect("add");
    assert_eq!(sum.total, 3);
}

/// A service whose handlers panic: "/t.Panic/Now" in its first poll (the driver polls a new
/// handler once inline), "/t.Panic/Later" after it was given a task of its own. The `Slot*`
/// methods do the same from reusable handler slots (as generated services run), every other call
/// to them answering normally: a panic in a slot ends that call only, and later calls still run.
struct Panicking;

/// Calls to the `Slot*` methods so far: odd ones panic.
static SLOT_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl rdma_rpc::rpc::Service for Panicking {
    fn name(&self) -> &'static str {
        "t.Panic"
    }
    fn methods(&self) -> &'static [&'static str] {
        &["/t.Panic/Now", "/t.Panic/Later", "/t.Panic/SlotNow", "/t.Panic/SlotLater"]
    }
    fn slot(&self, method: &str) -> Option<Box<dyn rdma_rpc::rpc::HandlerSlot>> {
        let later = match method {
            "/t.Panic/SlotNow" => false,
            "/t.Panic/SlotLater" => true,
            _ => return None,
        };
        Some(rdma_rpc::rpc::handler_slot(move |call| async move {
            let panics = SLOT_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 1;
            if later {
                tokio::task::yield_now().await;
            }
            if panics {
                panic!("test handler panics");
            }
            let (mut requests, _, _, finish) = call.into_parts::<EchoRequest, EchoRequest>();
            let request = requests.message().await.ok().flatten().unwrap_or_default();
            finish.result(Ok(request));
        }))
    }
    fn call(
        &self,
        method: &str,
        call: rdma_rpc::rpc::ServerCall,
    ) -> Result<rdma_rpc::rpc::HandlerFuture, rdma_rpc::rpc::ServerCall> {
        let later = method == "/t.Panic/Later";
        Ok(Box::pin(async move {
            if later {
                tokio::task::yield_now().await;
            }
            let _call = call;
            panic!("test handler panics");
        }))
    }
}

#[tokio::test]
async fn a_panicking_handler_ends_its_call_and_not_the_connection() {
    let listener = rdma_rpc::transport::tcp::TcpListener::bind("127.0.0.1:0", Default::default()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut router = rdma_rpc::rpc::Router::default();
    router.add(Panicking);
    router.add(rdma_rpc::echo::EchoService::server());
    let server = rdma_rpc::rpc::Server::new(router, Default::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        server.serve_tcp(listener, shutdown, std::time::Duration::from_secs(5)).await.expect("serve");
    });
    let connection = rdma_rpc::transport::tcp::TcpConnection::connect(addr, Default::default()).await.expect("connect");
    let client = rdma_rpc::rpc::Client::connect(connection, Default::default()).await.expect("handshake");
    // Slot methods alternate between answering and panicking (counted across both).
    for method in ["/t.Panic/SlotNow", "/t.Panic/SlotLater", "/t.Panic/SlotNow", "/t.Panic/SlotNow"] {
        let request = EchoRequest { payload: Bytes::from_static(b"slot") };
        let result = client.unary::<EchoRequest, EchoRequest>(method, &request).await;
        let calls = SLOT_CALLS.load(std::sync::atomic::Ordering::SeqCst);
        if calls % 2 == 1 {
            assert_eq!(result.expect(method).payload, request.payload, "{method}");
        } else {
            assert_eq!(result.expect_err(method).code, rdma_rpc::Code::Internal, "{method}");
        }
    }
    for method in ["/t.Panic/Now", "/t.Panic/Later", "/t.Panic/Now"] {
        let err = client.unary::<EchoRequest, EchoRequest>(method, &EchoRequest::default()).await.expect_err(method);
        assert_eq!(err.code, rdma_rpc::Code::Internal, "{method}: {err}");
        let echo = EchoClient::new(client.clone());
        let reply = echo.echo(&EchoRequest { payload: Bytes::from_static(b"still here") }).await.expect("echo");
        assert_eq!(&reply.payload[..], b"still here");
    }
    let _ = stop.send(());
    task.await.expect("server task");
}
