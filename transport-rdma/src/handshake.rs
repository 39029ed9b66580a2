//! Connection setup over the TCP connection (brpc's design): the client offers RDMA in a hello,
//! the server answers with its queue-pair details or a refusal, the client confirms once its QP is
//! ready to send. When either side cannot do RDMA, the same TCP connection carries the traffic.
//!
//! ```text
//! hello   "RDMARPC" 0x01 | qpn u32 | psn u32 | gid [16] | mtu u32 | recv_buffers u32 | buffer_size u32
//! accept  "RDMARPC" 0x02 | the same fields, the server's
//! refuse  "RDMARPC" 0x03 | reason, UTF-8
//! ready   "RDMARPC" 0x04
//! ```
//! A first message that does not start with the magic is a plain rdma-rpc frame: the server keeps
//! it and serves the connection over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use rdma_rpc_transport_tcp::{TcpConnection, TcpReceiver, TcpSender};

use crate::connection::{RdmaConnection, Setup};
use crate::verbs::QpEndpoint;
use crate::{RdmaConfig, RdmaError};

const MAGIC: &[u8; 7] = b"RDMARPC";
const HELLO: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const READY: u8 = 4;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client ended up with.
#[derive(Debug)]
pub enum Negotiated {
    /// The data path runs over RDMA.
    Rdma(RdmaConnection),
    /// RDMA was not possible; the TCP connection carries the traffic.
    Tcp {
        /// Sending half of the TCP connection.
        sender: TcpSender,
        /// Receiving half.
        receiver: TcpReceiver,
        /// Why not RDMA.
        reason: String,
    },
}

/// What the server ended up with.
#[derive(Debug)]
pub enum Accepted {
    /// The data path runs over RDMA.
    Rdma(RdmaConnection),
    /// The connection stays on TCP.
    Tcp {
        /// Sending half.
        sender: TcpSender,
        /// Receiving half.
        receiver: TcpReceiver,
        /// The first message, already read: deliver it before reading more.
        first: Option<Bytes>,
        /// Why not RDMA, when the client asked for it.
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Offer {
    endpoint: QpEndpoint,
    recv_buffers: u32,
    buffer_size: u32,
}

fn encode(kind: u8, offer: Option<&Offer>, reason: &str) -> rdma_rpc_transport_tcp::SendBuf {
    let mut buf = rdma_rpc_transport_tcp::SendBuf::with_capacity(64 + reason.len());
    let out = buf.body_mut();
    out.put_slice(MAGIC);
    out.put_u8(kind);
    if let Some(offer) = offer {
        out.put_u32(offer.endpoint.qpn);
        out.put_u32(offer.endpoint.psn);
        out.put_slice(&offer.endpoint.gid);
        out.put_u32(offer.endpoint.mtu);
        out.put_u32(offer.recv_buffers);
        out.put_u32(offer.buffer_size);
    }
    out.put_slice(reason.as_bytes());
    buf
}

/// The kind byte of a handshake message, or None for anything else (a plain frame).
fn kind_of(message: &[u8]) -> Option<u8> {
    (message.len() > MAGIC.len() && message.starts_with(MAGIC)).then(|| message[MAGIC.len()])
}

fn decode_offer(message: &Bytes) -> Result<Offer, RdmaError> {
    let mut body = message.slice(MAGIC.len() + 1..);
    if body.remaining() < 36 {
        return Err(RdmaError::Handshake(format!("queue-pair details truncated ({} bytes)", body.remaining())));
    }
    let qpn = body.get_u32();
    let psn = body.get_u32();
    let mut gid = [0u8; 16];
    body.copy_to_slice(&mut gid);
    let endpoint = QpEndpoint { qpn, psn, gid, mtu: body.get_u32() };
    Ok(Offer { endpoint, recv_buffers: body.get_u32(), buffer_size: body.get_u32() })
}

async fn recv(receiver: &mut TcpReceiver, step: &str) -> Result<Bytes, RdmaError> {
    match tokio::time::timeout(STEP_TIMEOUT, receiver.recv()).await {
        Ok(Ok(Some(message))) => Ok(message),
        Ok(Ok(None)) => Err(RdmaError::Handshake(format!("peer closed the connection during {step}"))),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(RdmaError::Handshake(format!("no answer within {STEP_TIMEOUT:?} during {step}"))),
    }
}

fn random_psn() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(13)) & 0x00ff_ffff
}

/// Client side: offers RDMA over `tcp` and returns the connection RDMA or TCP carries.
pub async fn connect(tcp: TcpConnection, config: &RdmaConfig) -> Result<Negotiated, RdmaError> {
    let (local, peer) = (tcp.local_addr(), tcp.peer_addr());
    let (mut sender, mut receiver) = tcp.split();
    let setup = match Setup::new(config, local.ip(), random_psn()) {
        Ok(setup) => setup,
        Err(err) if err.is_unavailable() => return Ok(Negotiated::Tcp { sender, receiver, reason: err.to_string() }),
        Err(err) => return Err(err),
    };
    let offer =
        Offer { endpoint: setup.endpoint(), recv_buffers: config.recv_buffers, buffer_size: buffer_size(config) };
    sender.send(encode(HELLO, Some(&offer), "")).await?;
    let reply = recv(&mut receiver, "the RDMA offer").await?;
    match kind_of(&reply) {
        Some(ACCEPT) => {
            let theirs = decode_offer(&reply)?;
            if theirs.buffer_size != offer.buffer_size {
                return Err(RdmaError::Handshake(format!(
                    "the server accepted with buffers of {} bytes, this side uses {}",
                    theirs.buffer_size, offer.buffer_size
                )));
            }
            let connection = setup.finish(&theirs.endpoint, theirs.recv_buffers, peer)?;
            sender.send(encode(READY, None, "")).await?;
            Ok(Negotiated::Rdma(connection.attach(sender, receiver)))
        }
        Some(REFUSE) => {
            let reason = String::from_utf8_lossy(&reply[MAGIC.len() + 1..]).into_owned();
            Ok(Negotiated::Tcp { sender, receiver, reason: format!("the server cannot do RDMA: {reason}") })
        }
        _ => {
            Err(RdmaError::Handshake("the server answered the RDMA offer with something else: is it rdma-rpc?".into()))
        }
    }
}

/// Server side: reads the first message of an accepted connection; sets up RDMA if the client
/// offers it and `config` allows it, otherwise keeps the connection on TCP.
pub async fn accept(tcp: TcpConnection, config: Option<&RdmaConfig>) -> Result<Accepted, RdmaError> {
    let (local, peer): (SocketAddr, SocketAddr) = (tcp.local_addr(), tcp.peer_addr());
    let (mut sender, mut receiver) = tcp.split();
    let first = recv(&mut receiver, "the first message").await?;
    if kind_of(&first) != Some(HELLO) {
        return Ok(Accepted::Tcp { sender, receiver, first: Some(first), reason: None });
    }
    let theirs = decode_offer(&first)?;
    let setup = match config {
        None => Err(RdmaError::Unavailable { reason: "the server runs without RDMA".into() }),
        Some(config) => Setup::new(config, local.ip(), random_psn()).map(|s| (s, config)),
    };
    let (setup, config) = match setup {
        Ok(ok) => ok,
        Err(err) => {
            let reason = err.to_string();
            sender.send(encode(REFUSE, None, &reason)).await?;
            return Ok(Accepted::Tcp { sender, receiver, first: None, reason: Some(reason) });
        }
    };
    if theirs.buffer_size as usize != buffer_size(config) as usize {
        let reason = format!("buffer sizes differ (client {}, server {})", theirs.buffer_size, buffer_size(config));
        sender.send(encode(REFUSE, None, &reason)).await?;
        return Ok(Accepted::Tcp { sender, receiver, first: None, reason: Some(reason) });
    }
    let ours =
        Offer { endpoint: setup.endpoint(), recv_buffers: config.recv_buffers, buffer_size: buffer_size(config) };
    let connection = setup.finish(&theirs.endpoint, theirs.recv_buffers, peer)?;
    sender.send(encode(ACCEPT, Some(&ours), "")).await?;
    let ready = recv(&mut receiver, "the client's confirmation").await?;
    if kind_of(&ready) != Some(READY) {
        return Err(RdmaError::Handshake("the client did not confirm its queue pair".into()));
    }
    Ok(Accepted::Rdma(connection.attach(sender, receiver)))
}

fn buffer_size(config: &RdmaConfig) -> u32 {
    u32::try_from(config.buffer_size).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_and_frames_are_not_handshakes() {
        let offer = Offer {
            endpoint: QpEndpoint { qpn: 0x11, psn: 0x22, gid: [7; 16], mtu: 1024 },
            recv_buffers: 64,
            buffer_size: 131_072,
        };
        let message = encode(HELLO, Some(&offer), "").freeze();
        assert_eq!(kind_of(&message), Some(HELLO));
        let back = decode_offer(&message).expect("decodes");
        assert_eq!(back.endpoint, offer.endpoint);
        assert_eq!((back.recv_buffers, back.buffer_size), (64, 131_072));
        assert_eq!(kind_of(&[1, 3, 0, 0]), None, "an rdma-rpc frame starts with version 1");
        assert!(decode_offer(&Bytes::from_static(b"RDMARPC\x01short")).is_err());
    }
}
