//! End-to-end tests of the TCP transport over real loopback sockets.

use bytes::{BufMut, Bytes};
use rdma_rpc_transport_tcp::{SendBuf, TcpConfig, TcpConnection, TcpError, TcpListener, TcpReceiver, TcpSender};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MESSAGES: usize = 1000;
const MIB: usize = 1024 * 1024;

/// A connected (client, server) pair over 127.0.0.1.
async fn pair(config: TcpConfig) -> (TcpConnection, TcpConnection) {
    let listener = TcpListener::bind("127.0.0.1:0", config.clone()).await.expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (client, server) = tokio::join!(TcpConnection::connect(addr, config), listener.accept());
    (client.expect("connect"), server.expect("accept"))
}

/// A raw socket (to send arbitrary bytes) connected to a transport receiver.
async fn raw_peer(config: TcpConfig) -> (TcpStream, TcpReceiver) {
    let listener = TcpListener::bind("127.0.0.1:0", config).await.expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (raw, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (_, receiver) = server.expect("accept").split();
    (raw.expect("raw connect"), receiver)
}

/// Size of message `i`: empty, exactly 1 MiB, a few large ones, mostly small.
fn size_of(i: usize) -> usize {
    match i {
        0 => 0,
        1 => MIB,
        _ if i % 50 == 7 => (i * 7919) % (MIB + 1),
        _ => (i * 131) % 4097,
    }
}

/// Deterministic pseudo-random content of message `i`.
fn content(i: usize) -> Vec<u8> {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size_of(i))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Receives until a clean close and checks every message byte for byte.
async fn expect_all(mut rx: TcpReceiver, count: usize) {
    let mut received = 0;
    while let Some(message) = rx.recv().await.expect("receive") {
        assert!(received < count, "more messages than sent");
        let want = content(received);
        assert_eq!(message.len(), want.len(), "length of message {received}");
        assert!(message[..] == want[..], "content of message {received}");
        received += 1;
    }
    assert_eq!(received, count);
    assert_eq!(rx.recv().await.expect("still closed"), None);
}

fn send_buf(message: &[u8]) -> SendBuf {
    let mut buf = SendBuf::with_capacity(message.len());
    buf.body_mut().put_slice(message);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_with_feed_flush_batching() {
    let (client, server) = pair(TcpConfig::default()).await;
    assert_eq!(client.peer_addr(), server.local_addr());
    assert_eq!(client.local_addr(), server.peer_addr());
    let (mut tx, _client_rx) = client.split();
    let (_server_tx, rx) = server.split();
    let receiver = tokio::spawn(expect_all(rx, MESSAGES));

    for i in 0..MESSAGES {
        let message = content(i);
        let mut buf = tx.buffer(message.len());
        buf.body_mut().put_slice(&message);
        assert_eq!(buf.len(), message.len());
        let queued = tx.queued_bytes();
        tx.feed(buf).expect("feed");
        assert_eq!(tx.queued_bytes(), queued + 4 + message.len());
        if i % 10 == 9 || tx.batch_full() {
            tx.flush().await.expect("flush");
            assert_eq!(tx.queued_bytes(), 0);
        }
    }
    tx.shutdown().await.expect("shutdown");
    receiver.await.expect("receiver task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_with_payloads_and_send_batched() {
    let config = TcpConfig { max_batch_bytes: 64 * 1024, ..TcpConfig::default() };
    let (client, server) = pair(config).await;
    let (mut tx, _) = client.split();
    let (_, rx) = server.split();
    let receiver = tokio::spawn(expect_all(rx, MESSAGES));

    for i in 0..MESSAGES {
        let message = content(i);
        match i % 3 {
            0 => tx.send_batched(send_buf(&message)).await.expect("send"),
            _ => {
                // Head and payload split at varying points, including the ends.
                let at = if i % 3 == 1 { message.len().min(16) } else { 0 };
                let head = send_buf(&message[..at]);
                let payload = Bytes::copy_from_slice(&message[at..]);
                tx.feed_with_payload(head, payload).expect("feed");
            }
        }
        if tx.batch_full() {
            tx.flush().await.expect("flush");
        }
    }
    tx.flush().await.expect("final flush");
    tx.shutdown().await.expect("shutdown");
    receiver.await.expect("receiver task");
}

#[tokio::test]
async fn one_flush_writes_more_than_sixty_four_slices() {
    let (client, server) = pair(TcpConfig::default()).await;
    let (mut tx, _) = client.split();
    let (_, mut rx) = server.split();
    for i in 0..300u32 {
        let head = send_buf(&i.to_be_bytes());
        tx.feed_with_payload(head, Bytes::from(vec![7; 3])).expect("feed");
    }
    tx.send(send_buf(b"last")).await.expect("send");
    assert_eq!(tx.queued_bytes(), 0);
    for i in 0..300u32 {
        let message = rx.recv().await.expect("recv").expect("a message");
        assert_eq!(&message[..4], &i.to_be_bytes());
        assert_eq!(&message[4..], &[7, 7, 7]);
    }
    let last = rx.recv().await.expect("recv").expect("a message");
    assert_eq!(&last[..], b"last");
}

#[tokio::test]
async fn batched_messages_can_be_drained_without_io() {
    let (client, server) = pair(TcpConfig::default()).await;
    let (mut tx, _) = client.split();
    let (_, mut rx) = server.split();
    for message in [&b"a"[..], b"bb", b"ccc"] {
        tx.feed(send_buf(message)).expect("feed");
    }
    tx.shutdown().await.expect("shutdown");
    let first = rx.recv().await.expect("recv").expect("a message");
    assert_eq!(&first[..], b"a");
    let mut rest = Vec::new();
    // The rest may still be in flight; recv() waits, try_recv() never does.
    while rest.len() < 2 {
        match rx.try_recv().expect("try_recv") {
            Some(message) => rest.push(message),
            None => rest.extend(rx.recv().await.expect("recv")),
        }
    }
    assert_eq!(rest, [&b"bb"[..], b"ccc"]);
    assert_eq!(rx.buffered_bytes(), 0);
    assert_eq!(rx.recv().await.expect("clean close"), None);
}

#[tokio::test]
async fn sender_rejects_oversized_messages_and_use_after_shutdown() {
    let config = TcpConfig { max_message_size: 1024, ..TcpConfig::default() };
    let (client, server) = pair(config).await;
    let (mut tx, _): (TcpSender, _) = client.split();
    let (_, mut rx) = server.split();

    let err = tx.feed(send_buf(&[0; 1025])).expect_err("too large");
    assert!(matches!(err, TcpError::MessageTooLarge { len: 1025, max: 1024 }));
    let err = tx.feed_with_payload(send_buf(&[0; 1000]), Bytes::from(vec![0; 25])).expect_err("too large");
    assert!(matches!(err, TcpError::MessageTooLarge { len: 1025, max: 1024 }));
    assert_eq!(tx.queued_bytes(), 0, "nothing queued");

    tx.send(send_buf(&[1; 1024])).await.expect("exactly the maximum");
    tx.shutdown().await.expect("shutdown");
    tx.shutdown().await.expect("second shutdown is a no-op");
    assert!(matches!(tx.feed(send_buf(b"x")), Err(TcpError::Closed)));
    assert!(matches!(tx.flush().await, Err(TcpError::Closed)));

    let message = rx.recv().await.expect("recv").expect("a message");
    assert_eq!(message.len(), 1024);
    assert_eq!(rx.recv().await.expect("clean close"), None);
}

#[tokio::test]
async fn peer_announcing_a_length_over_max_is_rejected() {
    let config = TcpConfig { max_message_size: 1024, ..TcpConfig::default() };
    let (mut raw, mut rx) = raw_peer(config).await;
    raw.write_all(&[0, 0, 0, 2, b'o', b'k']).await.expect("write");
    raw.write_all(&1025u32.to_be_bytes()).await.expect("write");
    raw.write_all(&[0; 100]).await.expect("write");
    let ok = rx.recv().await.expect("first message is fine");
    assert_eq!(ok.as_deref(), Some(&b"ok"[..]));
    let err = rx.recv().await.expect_err("oversized length");
    assert!(matches!(err, TcpError::MessageTooLarge { len: 1025, max: 1024 }), "{err:?}");

    let (mut raw, mut rx) = raw_peer(TcpConfig::default()).await;
    raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    let err = rx.recv().await.expect_err("4 GiB announced");
    assert!(matches!(err, TcpError::MessageTooLarge { .. }), "{err:?}");
    assert!(rx.buffered_bytes() <= 4 + 100);
}

#[tokio::test]
async fn peer_closing_mid_message_is_truncated() {
    let (mut raw, mut rx) = raw_peer(TcpConfig::default()).await;
    raw.write_all(&[0, 0, 0, 1, b'x']).await.expect("write");
    raw.write_all(&100u32.to_be_bytes()).await.expect("write");
    raw.write_all(&[9; 10]).await.expect("write");
    raw.shutdown().await.expect("shutdown");
    let first = rx.recv().await.expect("complete message");
    assert_eq!(first.as_deref(), Some(&b"x"[..]));
    let err = rx.recv().await.expect_err("truncated body");
    assert!(matches!(err, TcpError::Truncated { needed: 104, got: 14 }), "{err:?}");

    // Closing inside the length prefix itself.
    let (mut raw, mut rx) = raw_peer(TcpConfig::default()).await;
    raw.write_all(&[0, 0]).await.expect("write");
    drop(raw);
    let err = rx.recv().await.expect_err("truncated prefix");
    assert!(matches!(err, TcpError::Truncated { needed: 4, got: 2 }), "{err:?}");
}

#[tokio::test]
async fn clean_close_is_none() {
    let (client, server) = pair(TcpConfig::default()).await;
    let (mut tx, _) = client.split();
    let (_, mut rx) = server.split();
    tx.send(send_buf(b"")).await.expect("empty message");
    tx.send(send_buf(b"bye")).await.expect("send");
    drop(tx);
    assert_eq!(rx.recv().await.expect("recv").as_deref(), Some(&b""[..]));
    assert_eq!(rx.recv().await.expect("recv").as_deref(), Some(&b"bye"[..]));
    assert_eq!(rx.recv().await.expect("clean close"), None);
    assert_eq!(rx.recv().await.expect("still closed"), None);
}

#[tokio::test]
async fn connecting_to_a_closed_port_names_the_fix() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound address");
    drop(listener);
    let err = TcpConnection::connect(addr, TcpConfig::default()).await.expect_err("nothing listens");
    let TcpError::Connect { addr: tried, .. } = &err else {
        panic!("expected TcpError::Connect, got {err:?}");
    };
    assert_eq!(tried, &addr.to_string());
    let text = err.to_string();
    assert!(text.contains("is a server listening?"), "{text}");
    assert!(text.contains(&format!("`rdma-rpc serve --listen tcp://{addr}`")), "{text}");
}

#[tokio::test]
async fn nodelay_follows_the_config() {
    let (client, server) = pair(TcpConfig::default()).await;
    assert!(client.nodelay().expect("nodelay"));
    assert!(server.nodelay().expect("nodelay"));
    let config = TcpConfig { nodelay: false, ..TcpConfig::default() };
    let (client, server) = pair(config.clone()).await;
    assert!(!client.nodelay().expect("nodelay"));
    assert!(!server.nodelay().expect("nodelay"));
    assert_eq!(client.config(), &config);
}

/// Busy-polling reads what arrives while it spins, falls back to sleeping in the reactor once
/// the window passed (a message after a pause still arrives), and loses nothing when its `recv`
/// is dropped mid-spin (cancel safety, as the RPC driver's `select!` needs).
#[tokio::test(flavor = "current_thread")]
async fn busy_poll_reads_within_and_after_its_window_and_is_cancel_safe() {
    let config = TcpConfig { busy_poll: Some(std::time::Duration::from_millis(5)), ..TcpConfig::default() };
    let (client, server) = pair(config).await;
    let (mut tx, _client_rx) = client.split();
    let (_server_tx, mut rx) = server.split();
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            tx.send(send_buf(&content(i))).await.expect("send");
            match i % 50 {
                // A pause longer than the spin window: the receiver must go to sleep and wake up.
                49 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                n if n % 7 == 0 => tokio::task::yield_now().await,
                _ => {}
            }
        }
        tx.shutdown().await.expect("shutdown");
    });
    let mut received = 0;
    loop {
        // Drop the receive future every 50 µs while it spins: nothing may be lost.
        let message = tokio::select! {
            message = rx.recv() => message.expect("receive"),
            () = tokio::time::sleep(std::time::Duration::from_micros(50)) => continue,
        };
        let Some(message) = message else { break };
        assert!(message[..] == content(received)[..], "content of message {received}");
        received += 1;
    }
    assert_eq!(received, 200);
    sender.await.expect("sender");
}
