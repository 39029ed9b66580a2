//! A unary echo round trip over TCP on loopback, against a raw tokio TCP echo of the same payloads.
//!
//! Group `unary_tcp`, payloads 64 B, 4 KiB and 64 KiB:
//! - `rpc_echo/N`: `Echo/Echo` through an rdma-rpc client and server (TCP transport, one
//!   connection, calls one after the other).
//! - `raw_tcp_echo/N`: the same payload as one u32-length-prefixed message written and read back
//!   by plain tokio code: the floor the RPC stack is measured against.
//!
//! Client, servers and the benchmark loop share one multi-thread tokio runtime with 2 workers.
//! Each sample runs its iterations inside one `block_on` (as criterion's `to_async` would), so the
//! cost of entering the runtime is not counted per call. Throughput is the payload size (each
//! round trip carries it both ways).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rdma_rpc::pb::echo::EchoRequest;
use rdma_rpc_benches::{ROUND_TRIP_SIZES, RawEchoServer, RpcEchoServer, payload};

fn unary_tcp(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");

    let (rpc_server, rpc_client, raw_server, mut raw_client) = rt.block_on(async {
        let rpc_server = RpcEchoServer::start().await.expect("the rpc echo server binds 127.0.0.1");
        let rpc_client = rpc_server.client().await.expect("the rpc client connects to the loopback server");
        let raw_server = RawEchoServer::start().await.expect("the raw echo server binds 127.0.0.1");
        let raw_client = raw_server.client().await.expect("the raw client connects to the loopback server");
        (rpc_server, rpc_client, raw_server, raw_client)
    });

    let mut group = c.benchmark_group("unary_tcp");
    for size in ROUND_TRIP_SIZES {
        let request = EchoRequest { payload: payload(size) };
        rt.block_on(async {
            let reply = rpc_client.echo(&request).await.expect("the rpc echo answers");
            assert_eq!(reply.payload, request.payload, "rpc echo returns the payload");
            let back = raw_client.round_trip(&request.payload).await.expect("the raw echo answers");
            assert_eq!(back, &request.payload[..], "raw echo returns the payload");
        });
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("rpc_echo", size), &request, |b, request| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let reply = rpc_client.echo(black_box(request)).await.expect("the rpc echo answers");
                        black_box(reply);
                    }
                    start.elapsed()
                })
            });
        });

        group.bench_with_input(BenchmarkId::new("raw_tcp_echo", size), &request.payload, |b, payload| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let back = raw_client.round_trip(black_box(payload)).await.expect("the raw echo answers");
                        black_box(back);
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();

    rt.block_on(async {
        drop(rpc_client);
        drop(raw_client);
        drop(raw_server);
        // Bounded: the server drains for at most its own drain period.
        let stopped = tokio::time::timeout(Duration::from_secs(5), rpc_server.stop()).await;
        stopped.expect("the rpc server stops within 5 s").expect("the rpc server stops cleanly");
    });
}

criterion_group!(benches, unary_tcp);
criterion_main!(benches);
