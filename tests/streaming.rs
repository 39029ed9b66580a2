//! Streaming calls over TCP on loopback: server, client and bidirectional streams of the generated
//! test service, and a 1 GiB raw bidirectional stream checked byte for byte.

mod common;

use bytes::{Bytes, BytesMut};
use common::TestServer;
use common::calculator::pb::{CalculatorClient, CountRequest, Numbers};

#[tokio::test]
async fn server_streaming_delivers_every_item_in_order() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let mut replies = client.count(&CountRequest { upto: 500, delay_ms: 0 }).await.expect("open");
    let mut expected = 1;
    while let Some(sum) = replies.message().await.expect("stream") {
        assert_eq!(sum.count, expected);
        expected += 1;
    }
    assert_eq!(expected, 501);
}

#[tokio::test]
async fn client_streaming_sums_everything_sent() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let (mut requests, reply) = client.total().await.expect("open");
    for i in 0..1000 {
        requests.send(&Numbers { values: vec![i, 1] }).await.expect("send");
    }
    requests.finish().await.expect("finish");
    let sum = reply.response().await.expect("reply");
    assert_eq!((sum.total, sum.count), ((0..1000).sum::<i64>() + 1000, 2000));
}

#[tokio::test]
async fn bidirectional_stream_interleaves_requests_and_replies() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let (mut requests, mut replies) = client.running().await.expect("open");
    let mut total = 0;
    for i in 1..=100 {
        requests.send(&Numbers { values: vec![i] }).await.expect("send");
        total += i;
        let sum = replies.message().await.expect("reply").expect("one reply per request");
        assert_eq!(sum.total, total);
    }
    requests.finish().await.expect("finish");
    assert_eq!(replies.message().await.expect("clean end"), None);
}

/// A half-close sent right after the Open travels on the other command queue than the Open; it
/// must not overtake it (the server would wait for an end that was dropped as unknown). Each
/// stream is opened and finished at once, from tasks on two threads, many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_finished_right_after_it_opened_ends_cleanly() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..2000 {
                let (requests, reply) = client.total().await.expect("open");
                requests.finish().await.expect("finish");
                let wait = tokio::time::timeout(std::time::Duration::from_secs(10), reply.response());
                let sum = wait.await.expect("the server saw the half-close").expect("reply");
                assert_eq!((sum.total, sum.count), (0, 0));
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

/// Chunk `index` of the test stream: a 1 MiB pattern whose first 8 bytes carry the index.
fn chunk(pattern: &Bytes, index: u64) -> Bytes {
    let mut chunk = BytesMut::from(&pattern[..]);
    chunk[..8].copy_from_slice(&index.to_be_bytes());
    chunk.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_bidirectional_stream_arrives_byte_for_byte() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 1024; // 1 GiB each way
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let pattern: Bytes = (0..CHUNK).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>().into();
    let (mut requests, mut replies) = client.pipe().await.expect("open");
    let producer = {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            for index in 0..CHUNKS {
                requests.send_data(chunk(&pattern, index)).await.expect("send chunk");
            }
            requests.finish().await.expect("finish");
        })
    };
    let mut received = 0u64;
    let mut bytes = 0usize;
    while let Some(data) = replies.data().await.expect("stream") {
        assert_eq!(data.len(), CHUNK, "chunk {received} has the wrong size");
        assert_eq!(data[..8], received.to_be_bytes(), "chunk out of order");
        assert!(data[8..] == pattern[8..], "chunk {received} corrupted");
        received += 1;
        bytes += data.len();
    }
    producer.await.expect("producer");
    assert_eq!(received, CHUNKS);
    assert_eq!(bytes, 1 << 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_streams_through_transport_buffers_it_was_read_into() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let content: Vec<u8> = (0..8 * 1024 * 1024 + 123).map(|i: u32| (i.wrapping_mul(7919) >> 5) as u8).collect();
    let path = std::env::temp_dir().join(format!("rdma-rpc-file-stream-{}", std::process::id()));
    std::fs::write(&path, &content).expect("write the source file");
    let (requests, replies) = client.pipe().await.expect("open");
    let file = std::fs::File::open(&path).expect("open");
    let echoed = common::pipe_from_reader(requests, replies, file, 256 * 1024).await;
    let _ = std::fs::remove_file(&path);
    assert!(echoed == content, "the file came back different ({} of {} bytes)", echoed.len(), content.len());
}
