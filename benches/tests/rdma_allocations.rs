//! Heap allocations of the RDMA transport itself in steady state, below the RPC layer: a
//! ping-pong of 64-byte messages between the two ends of one RDMA connection allocates nothing.
//! Posting, polling, re-posting and credit return must not allocate, and a message this small is
//! copied into a reused chunk rather than wrapped in a `Bytes` handle over its receive buffer
//! (`Bytes::from_owner`, which allocates). Issue #5 asks for at most 2 allocations per unary call
//! over RDMA.
//!
//! Needs `RDMA_TEST_DEVICE` and `RDMA_TEST_ADDR` (`scripts/rxe-test` sets them); `#[ignore]`d
//! elsewhere. The counting allocator counts every thread of this test binary.

use bytes::{BufMut, Bytes};
use rdma_rpc::transport::rdma::{Accepted, Negotiated, RdmaConfig, RdmaReceiver, RdmaSender, accept, connect};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};
use rdma_rpc_benches::alloc_count::{CountingAlloc, Counts, Side};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const WARM_UP: u64 = 300;
const ROUND_TRIPS: u64 = 1000;

/// Every allocation counted so far, whatever thread made it.
fn allocations() -> u64 {
    let counts = Counts::now();
    [Side::Other, Side::Client, Side::Server].into_iter().map(|side| counts.allocations(side)).sum()
}

/// Sends one 64-byte message.
async fn send(alloc: &rdma_rpc::transport::rdma::RdmaAlloc, sender: &mut RdmaSender, byte: u8) {
    let mut buf = alloc.alloc(64).await.expect("send buffer");
    buf.put_bytes(byte, 64);
    sender.feed(buf).expect("feed");
    sender.flush().await.expect("flush");
}

/// Receives one message and checks it.
async fn recv(receiver: &mut RdmaReceiver, byte: u8) {
    let message: Bytes = receiver.recv().await.expect("recv").expect("a message, not the end");
    assert!(message.len() == 64 && message.iter().all(|&b| b == byte), "message {byte} arrived intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_transport_allocates_nothing_per_small_message() {
    let (Ok(device), Ok(addr)) = (std::env::var("RDMA_TEST_DEVICE"), std::env::var("RDMA_TEST_ADDR")) else {
        panic!(
            "RDMA_TEST_DEVICE / RDMA_TEST_ADDR are unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)"
        );
    };
    eprintln!("RDMA test on {device} at {addr}");
    let listener = TcpListener::bind(format!("{addr}:0"), TcpConfig::default()).await.expect("bind");
    let bound = listener.local_addr().expect("local address");
    let config = RdmaConfig::default();
    let server_config = config.clone();
    let server = tokio::spawn(async move {
        let tcp = listener.accept().await.expect("accept");
        match accept(tcp, Some(&server_config)).await.expect("handshake") {
            Accepted::Rdma(connection) => connection,
            _ => panic!("the server side did not get RDMA"),
        }
    });
    let tcp = TcpConnection::connect(bound, TcpConfig::default()).await.expect("connect");
    let Negotiated::Rdma(client) = connect(tcp, &config).await.expect("handshake") else {
        panic!("the client side did not get RDMA");
    };
    let server = server.await.expect("accept task");

    let (server_alloc, mut server_sender, mut server_receiver) = server.split();
    let echo = tokio::spawn(async move {
        for i in 0..WARM_UP + ROUND_TRIPS {
            let byte = i as u8;
            recv(&mut server_receiver, byte).await;
            send(&server_alloc, &mut server_sender, byte.wrapping_add(1)).await;
        }
        (server_sender, server_receiver)
    });
    let (alloc, mut sender, mut receiver) = client.split();
    let mut before = 0;
    for i in 0..WARM_UP + ROUND_TRIPS {
        if i == WARM_UP {
            before = allocations();
        }
        let byte = i as u8;
        send(&alloc, &mut sender, byte).await;
        recv(&mut receiver, byte.wrapping_add(1)).await;
    }
    let made = allocations() - before;
    let (_server_sender, _server_receiver) = echo.await.expect("echo task");

    // Nothing per message; a little room for the runtime's own bookkeeping (a task wake-up list
    // growing, a channel block) and for a chunk of small copies replaced while a view of the
    // last one was still alive.
    let per_round_trip = made as f64 / ROUND_TRIPS as f64;
    eprintln!("{made} allocations in {ROUND_TRIPS} round trips: {per_round_trip:.2} per round trip");
    assert!(per_round_trip <= 0.1, "{per_round_trip:.2} allocations per round trip; none expected");
}
