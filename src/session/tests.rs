//! Session dialogues in virtual time: two sessions exchange frames through the wire codec, with
//! the clock passed in by hand. No sockets, no tokio.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use super::*;
use crate::pb::rpc as pb;
use crate::status::Code;
use crate::wire::{Frame, Kind, WireLimits};

type S = Session<Bytes>;

fn small_config() -> SessionConfig {
    SessionConfig {
        max_frame_size: 1024,
        initial_call_window: 2048,
        connection_window: 4096,
        max_concurrent_calls: 4,
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        ..SessionConfig::default()
    }
}

fn pair(config: SessionConfig, now: Instant) -> (S, S) {
    let mut client = S::new(Role::Client, config.clone(), now).expect("valid config");
    let mut server = S::new(Role::Server, config, now).expect("valid config");
    exchange(&mut client, &mut server, now);
    assert!(client.is_ready() && server.is_ready());
    (client, server)
}

/// Turns a transmit into the frame the peer decodes, through the real codec.
fn to_frame(transmit: Transmit<Bytes>) -> Frame {
    let mut buf = BytesMut::new();
    match transmit {
        Transmit::Control(frame) => frame.encode(&mut buf),
        Transmit::Data { header, body } => {
            header.encode(&mut buf);
            buf.extend_from_slice(&body);
        }
    }
    Frame::decode(buf.freeze(), &WireLimits::default()).expect("own frames decode")
}

fn pump(from: &mut S, to: &mut S, now: Instant) -> Result<usize, SessionError> {
    let mut n = 0;
    while let Some(transmit) = from.poll_transmit() {
        to.handle_frame(now, to_frame(transmit))?;
        n += 1;
    }
    Ok(n)
}

fn exchange(a: &mut S, b: &mut S, now: Instant) {
    loop {
        let n = pump(a, b, now).expect("a -> b") + pump(b, a, now).expect("b -> a");
        if n == 0 {
            break;
        }
    }
}

fn events(session: &mut S) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn call_body(method: &str, timeout_micros: u64, message: &[u8]) -> Bytes {
    let header = pb::CallHeader {
        method: Bytes::copy_from_slice(method.as_bytes()),
        timeout_micros,
        metadata: Default::default(),
    };
    let mut buf = BytesMut::new();
    header.encode_length_delimited(&mut buf).expect("grows");
    buf.extend_from_slice(message);
    buf.freeze()
}

#[test]
fn call_data_waits_for_the_handshake() {
    let now = Instant::now();
    let mut client = S::new(Role::Client, small_config(), now).expect("config");
    let mut server = S::new(Role::Server, small_config(), now).expect("config");
    client.open_call(now, 1, None, call_body("/m", 0, b"x"), true, true).expect("open");
    // Before the server's SETTINGS, only the client's SETTINGS may leave.
    assert!(matches!(client.poll_transmit(), Some(Transmit::Control(Frame::Settings(_)))));
    assert!(client.poll_transmit().is_none());
    pump(&mut server, &mut client, now).expect("settings");
    assert!(matches!(client.poll_transmit(), Some(Transmit::Data { .. })));
}

#[test]
fn unary_call_completes_with_implicit_ok() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/svc/M", 0, b"ping"), true, true).expect("open");
    exchange(&mut client, &mut server, now);
    let got = events(&mut server);
    assert!(matches!(&got[0], Event::Incoming { id: 1, header } if header.method == "/svc/M"));
    assert_eq!(got[1], Event::Message { id: 1, body: Bytes::from_static(b"ping"), end: true });
    server.send(1, Kind::Message, Bytes::from_static(b"pong"), true).expect("reply");
    exchange(&mut client, &mut server, now);
    assert_eq!(
        events(&mut client),
        vec![
            Event::Message { id: 1, body: Bytes::from_static(b"pong"), end: true },
            Event::Closed { id: 1, status: crate::Status::ok() }
        ]
    );
    assert_eq!((client.open_calls(), server.open_calls()), (0, 0));
}

#[test]
fn a_whole_request_is_taken_with_its_call_and_an_ending_reply_with_its_end() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    // 1: unary, whole in its CALL frame. 2: the request without the end. 3: no message at all.
    client.open_call(now, 1, None, call_body("/svc/M", 0, b"one"), true, true).expect("open 1");
    client.open_call(now, 2, None, call_body("/svc/M", 0, b"two"), true, false).expect("open 2");
    client.open_call(now, 3, None, call_body("/svc/M", 0, b""), false, true).expect("open 3");
    exchange(&mut client, &mut server, now);
    assert!(matches!(server.poll_event(), Some(Event::Incoming { id: 1, .. })));
    assert_eq!(server.take_request(2), None, "another call's request is not taken");
    assert_eq!(server.take_request(1), Some(Bytes::from_static(b"one")));
    assert!(matches!(server.poll_event(), Some(Event::Incoming { id: 2, .. })));
    assert_eq!(server.take_request(2), None, "a stream that goes on is not a whole request");
    assert_eq!(server.poll_event(), Some(Event::Message { id: 2, body: Bytes::from_static(b"two"), end: false }));
    assert!(matches!(server.poll_event(), Some(Event::Incoming { id: 3, .. })));
    assert_eq!(server.take_request(3), None);
    assert_eq!(server.poll_event(), Some(Event::RemoteEnd { id: 3 }));
    // The taken request's call answers as any other; the client takes its end with the reply.
    server.send(1, Kind::Message, Bytes::from_static(b"pong"), true).expect("reply");
    exchange(&mut client, &mut server, now);
    assert_eq!(client.poll_event(), Some(Event::Message { id: 1, body: Bytes::from_static(b"pong"), end: true }));
    assert_eq!(client.take_closed(2), None, "another call's end is not taken");
    assert_eq!(client.take_closed(1), Some(crate::Status::ok()));
    assert_eq!(client.poll_event(), None);
}

#[test]
fn call_window_holds_data_until_the_receiver_consumes() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    for _ in 0..3 {
        client.send(1, Kind::Data, Bytes::from(vec![7u8; 1000]), false).expect("queue");
    }
    exchange(&mut client, &mut server, now);
    let data = events(&mut server).iter().filter(|e| matches!(e, Event::Data { .. })).count();
    assert_eq!(data, 2, "a 2048-byte call window admits two 1000-byte frames");
    // Consuming them grants credit; the third frame follows.
    server.release(1, 2000);
    exchange(&mut client, &mut server, now);
    let data = events(&mut server).iter().filter(|e| matches!(e, Event::Data { .. })).count();
    assert_eq!(data, 1);
}

#[test]
fn frames_that_skip_the_queues_stay_in_order_with_those_that_wait() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    exchange(&mut client, &mut server, now);
    events(&mut server);
    // Two frames fit the 2048-byte call window and skip the queues; the third waits for credit.
    for (n, len) in [(1u8, 1000), (2, 1000), (3, 1000)] {
        server.send(1, Kind::Data, Bytes::from(vec![n; len]), false).expect("queue");
    }
    exchange(&mut client, &mut server, now);
    let firsts = |events: Vec<Event>| -> Vec<u8> {
        events.into_iter().filter_map(|e| if let Event::Data { body, .. } = e { Some(body[0]) } else { None }).collect()
    };
    assert_eq!(firsts(events(&mut client)), vec![1, 2]);
    // The blocked call is out of the round-robin now; a fourth frame, which alone would fit,
    // still waits behind the third.
    server.send(1, Kind::Data, Bytes::from(vec![4; 10]), false).expect("queue");
    exchange(&mut client, &mut server, now);
    assert_eq!(firsts(events(&mut client)), Vec::<u8>::new());
    client.release(1, 2000);
    exchange(&mut client, &mut server, now);
    assert_eq!(firsts(events(&mut client)), vec![3, 4]);
}

#[test]
fn a_call_cancelled_before_its_frame_left_never_reaches_the_server() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b"x"), true, true).expect("open");
    client.finish(1, crate::Status::cancelled("user"));
    exchange(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![], "no CALL after the trailer that ended it");
    assert_eq!((client.open_calls(), server.open_calls()), (0, 0));
    // The connection goes on.
    client.open_call(now, 2, None, call_body("/m", 0, b"y"), true, true).expect("open");
    exchange(&mut client, &mut server, now);
    assert!(matches!(events(&mut server).first(), Some(Event::Incoming { id: 2, .. })));
}

#[test]
fn sending_past_the_granted_credit_is_a_flow_control_error() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    exchange(&mut client, &mut server, now);
    let over = Frame::Data { id: 1, body: Bytes::from(vec![0u8; 1000]), end: false };
    server.handle_frame(now, over.clone()).expect("within window");
    server.handle_frame(now, over.clone()).expect("within window");
    assert!(matches!(server.handle_frame(now, over), Err(SessionError::FlowControl { id: 1, .. })));
}

#[test]
fn deadline_fails_the_call_on_both_sides() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    let timeout = Duration::from_millis(100);
    client.open_call(now, 1, Some(timeout), call_body("/slow", 100_000, b"x"), true, true).expect("open");
    exchange(&mut client, &mut server, now);
    events(&mut server);
    assert!(client.poll_timeout().expect("timer") <= now + timeout);
    let later = now + timeout;
    client.handle_timeout(later);
    server.handle_timeout(later);
    let closed = |events: Vec<Event>| {
        events
            .into_iter()
            .any(|e| matches!(e, Event::Closed { id: 1, status } if status.code == Code::DeadlineExceeded))
    };
    assert!(closed(events(&mut client)));
    assert!(closed(events(&mut server)), "the server stops its work too");
    exchange(&mut client, &mut server, later);
    assert_eq!((client.open_calls(), server.open_calls()), (0, 0));
}

#[test]
fn client_cancellation_reaches_the_server() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    exchange(&mut client, &mut server, now);
    events(&mut server);
    client.finish(1, crate::Status::cancelled("user"));
    exchange(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![Event::Closed { id: 1, status: crate::Status::cancelled("user") }]);
}

#[test]
fn keepalive_pings_then_declares_a_silent_peer_dead() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    exchange(&mut client, &mut server, now);
    let t1 = now + Duration::from_secs(1);
    client.handle_timeout(t1);
    assert!(matches!(client.poll_transmit(), Some(Transmit::Control(Frame::Ping(_)))));
    // An answered ping keeps the connection.
    client.handle_frame(t1, Frame::Pong(1)).expect("pong");
    assert!(!client.is_closed());
    // Silence past interval + timeout kills it, failing the open call.
    let t2 = t1 + Duration::from_secs(1);
    client.handle_timeout(t2);
    assert!(matches!(client.poll_transmit(), Some(Transmit::Control(Frame::Ping(_)))));
    client.handle_timeout(t2 + Duration::from_secs(2));
    assert!(client.is_closed());
    let got = events(&mut client);
    assert!(got.iter().any(|e| matches!(e, Event::Closed { id: 1, status } if status.code == Code::Unavailable)));
    assert!(matches!(got.last(), Some(Event::ConnectionClosed(s)) if s.message.contains("keepalive")));
}

#[test]
fn goaway_drains_open_calls_and_refuses_new_ones() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b"a"), true, true).expect("open");
    exchange(&mut client, &mut server, now);
    events(&mut server);
    server.shutdown(crate::Status::unavailable("restart"));
    // Call 2 crosses the GOAWAY on the wire: the server never saw it.
    client.open_call(now, 2, None, call_body("/m", 0, b"b"), true, true).expect("open before goaway arrives");
    exchange(&mut client, &mut server, now);
    let got = events(&mut client);
    assert!(got.iter().any(|e| matches!(e, Event::GoAway { last_call_id: 1, .. })));
    assert!(got.iter().any(|e| matches!(e, Event::Closed { id: 2, status } if status.code == Code::Unavailable)));
    assert!(client.open_call(now, 3, None, call_body("/m", 0, b"c"), true, true).is_err());
    // Call 1 still completes, then both sides are done.
    server.send(1, Kind::Message, Bytes::from_static(b"done"), true).expect("reply");
    exchange(&mut client, &mut server, now);
    assert!(events(&mut client).iter().any(|e| matches!(e, Event::Closed { id: 1, status } if status.is_ok())));
    assert!(server.is_closed() && client.is_closed());
}

#[test]
fn calls_past_the_concurrency_limit_are_refused() {
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    for id in 1..=5 {
        client.open_call(now, id, None, call_body("/m", 0, b""), false, false).expect("open");
    }
    exchange(&mut client, &mut server, now);
    assert_eq!(server.open_calls(), 4);
    let refused = events(&mut client);
    assert!(
        refused.iter().any(|e| matches!(e, Event::Closed { id: 5, status } if status.code == Code::ResourceExhausted))
    );
}

#[test]
fn frames_before_settings_and_calls_from_a_server_are_protocol_errors() {
    let now = Instant::now();
    let mut server = S::new(Role::Server, small_config(), now).expect("config");
    assert!(server.handle_frame(now, Frame::Ping(1)).is_err());
    let (mut client, _) = pair(small_config(), now);
    let call = Frame::Call { id: 9, header: pb::CallHeader::default(), message: None, end: true };
    assert!(matches!(client.handle_frame(now, call), Err(SessionError::Protocol(_))));
}

#[test]
fn a_peer_that_never_answers_the_handshake_times_out() {
    let now = Instant::now();
    let mut client = S::new(Role::Client, small_config(), now).expect("config");
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(2)));
    client.handle_timeout(now + Duration::from_secs(2));
    assert!(client.is_closed());
}

#[test]
fn oversized_message_is_refused_locally_with_the_fix() {
    let now = Instant::now();
    let (mut client, _server) = pair(small_config(), now);
    client.open_call(now, 1, None, call_body("/m", 0, b""), false, false).expect("open");
    let err = client.send(1, Kind::Message, Bytes::from(vec![0u8; 2000]), false).expect_err("too large");
    assert_eq!(err.code, Code::ResourceExhausted);
    assert!(err.message.contains("max_frame_size"), "{err}");
}

#[test]
fn call_headers_do_not_leak_connection_credit() {
    // Thousands of unary calls through a 4 KiB connection window: the CALL header bytes the
    // client's window is charged for must come back as well, or the connection stalls for good.
    let now = Instant::now();
    let (mut client, mut server) = pair(small_config(), now);
    for id in 1..=2000 {
        client.open_call(now, id, None, call_body("/svc/SomeMethod", 5_000_000, b"ping"), true, true).expect("open");
        exchange(&mut client, &mut server, now);
        let got = events(&mut server);
        assert!(matches!(got.first(), Some(Event::Incoming { .. })), "call {id} reached the server: {got:?}");
        server.send(id, Kind::Message, Bytes::from_static(b"pong"), true).expect("reply");
        exchange(&mut client, &mut server, now);
        let got = events(&mut client);
        assert!(matches!(got.last(), Some(Event::Closed { status, .. }) if status.is_ok()), "call {id}: {got:?}");
    }
}
