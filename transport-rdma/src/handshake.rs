//! Connection setup over the TCP connection (brpc's design): the client offers RDMA in a hello,
//! the server answers with its queue-pair details or a refusal, the client confirms once its QP is
//! ready to send. When either side cannot do RDMA, the same TCP connection carries the traffic.
//!
//! ```text
//! hello   "RDMARPC" 0x01 | version u8 = 3 | qpn u32 | psn u32 | gid [16] | mtu u32 | lid u16 | link u8
//!         | recv_buffers u32 | buffer_size u32 | classes u8
//!         | per large class: size u32, count u32, addr u64, rkey u32
//! accept  "RDMARPC" 0x02 | the same fields, the server's
//! refuse  "RDMARPC" 0x03 | reason, UTF-8
//! ready   "RDMARPC" 0x04
//! ```
//! The large classes are the receive buffers each side lends the other for RDMA WRITEs
//! (`large.rs`): both sides must configure the same sizes and counts. A peer speaking another
//! version is refused with the reason (version 1 had no large classes, version 2 no LID and link
//! layer). `lid` is the port's InfiniBand LID (0 on RoCE) and `link` its link layer (1 Ethernet,
//! 2 InfiniBand); `route.rs` turns them into the address vector, and sides whose link layers
//! differ are refused.
//! A first message that does not start with the magic is a plain rdma-rpc frame: the server keeps
//! it and serves the connection over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use rdma_rpc_transport_tcp::{TcpConnection, TcpReceiver, TcpSender};

use crate::connection::{RdmaConnection, Setup};
use crate::large::Advertised;
use crate::route::{Link, address_vector};
use crate::verbs::QpEndpoint;
use crate::{RdmaConfig, RdmaError};

const MAGIC: &[u8; 7] = b"RDMARPC";
const HELLO: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const READY: u8 = 4;
/// Version of the hello and accept layout.
const VERSION: u8 = 3;
/// Bytes of the fixed part of an offer after the kind byte (version to class count).
const OFFER_FIXED: usize = 1 + 4 + 4 + 16 + 4 + 2 + 1 + 4 + 4 + 1;
/// Bytes per advertised large class.
const CLASS_LEN: usize = 4 + 4 + 8 + 4;
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

#[derive(Debug, Clone)]
struct Offer {
    endpoint: QpEndpoint,
    recv_buffers: u32,
    buffer_size: u32,
    large: Vec<Advertised>,
}

impl Offer {
    fn new(setup: &Setup, config: &RdmaConfig) -> Offer {
        let buffer_size = u32::try_from(config.buffer_size).unwrap_or(u32::MAX);
        Offer { endpoint: setup.endpoint(), recv_buffers: config.recv_buffers, buffer_size, large: setup.advertised() }
    }

    /// Why this side cannot talk to `theirs`, if it cannot: the link layers must be the same (and
    /// an InfiniBand peer's LID usable), and so must buffer sizes and large classes.
    fn mismatch(&self, theirs: &Offer) -> Option<String> {
        let classes = |o: &Offer| o.large.iter().map(|c| (c.size, c.count)).collect::<Vec<_>>();
        // Different link layers, or an InfiniBand LID that cannot be addressed.
        if let Err(unreachable) = address_vector(&self.endpoint, &theirs.endpoint, 0) {
            Some(unreachable)
        } else if theirs.buffer_size != self.buffer_size {
            Some(format!("buffer sizes differ (peer {}, here {})", theirs.buffer_size, self.buffer_size))
        } else if classes(theirs) != classes(self) {
            Some(format!("large classes (size, count) differ (peer {:?}, here {:?})", classes(theirs), classes(self)))
        } else {
            None
        }
    }
}

fn encode(kind: u8, offer: Option<&Offer>, reason: &str) -> rdma_rpc_transport_tcp::SendBuf {
    let classes = offer.map_or(0, |o| o.large.len());
    let mut buf = rdma_rpc_transport_tcp::SendBuf::with_capacity(64 + CLASS_LEN * classes + reason.len());
    let out = buf.body_mut();
    out.put_slice(MAGIC);
    out.put_u8(kind);
    if let Some(offer) = offer {
        out.put_u8(VERSION);
        out.put_u32(offer.endpoint.qpn);
        out.put_u32(offer.endpoint.psn);
        out.put_slice(&offer.endpoint.gid);
        out.put_u32(offer.endpoint.mtu);
        out.put_u16(offer.endpoint.lid);
        out.put_u8(offer.endpoint.link.code());
        out.put_u32(offer.recv_buffers);
        out.put_u32(offer.buffer_size);
        out.put_u8(u8::try_from(offer.large.len()).unwrap_or(u8::MAX));
        for class in offer.large.iter().take(u8::MAX as usize) {
            out.put_u32(class.size);
            out.put_u32(class.count);
            out.put_u64(class.addr);
            out.put_u32(class.rkey);
        }
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
    let version = body.first().copied().unwrap_or(0);
    if version != VERSION {
        return Err(RdmaError::PeerRefused {
            reason: format!("the peer speaks RDMA handshake version {version}, this side speaks {VERSION}"),
        });
    }
    if body.remaining() < OFFER_FIXED {
        return Err(RdmaError::Handshake(format!("queue-pair details truncated ({} bytes)", body.remaining())));
    }
    body.advance(1);
    let qpn = body.get_u32();
    let psn = body.get_u32();
    let mut gid = [0u8; 16];
    body.copy_to_slice(&mut gid);
    let (mtu, lid, link_code) = (body.get_u32(), body.get_u16(), body.get_u8());
    let link = Link::from_code(link_code)
        .ok_or_else(|| RdmaError::Handshake(format!("unknown link layer {link_code} in the peer's offer")))?;
    let endpoint = QpEndpoint { qpn, psn, gid, mtu, lid, link };
    let (recv_buffers, buffer_size) = (body.get_u32(), body.get_u32());
    let classes = body.get_u8() as usize;
    if body.remaining() < classes * CLASS_LEN {
        return Err(RdmaError::Handshake(format!(
            "{classes} large classes announced, {} bytes follow",
            body.remaining()
        )));
    }
    let large = (0..classes)
        .map(|_| Advertised { size: body.get_u32(), count: body.get_u32(), addr: body.get_u64(), rkey: body.get_u32() })
        .collect();
    Ok(Offer { endpoint, recv_buffers, buffer_size, large })
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
    let offer = Offer::new(&setup, config);
    sender.send(encode(HELLO, Some(&offer), "")).await?;
    let reply = recv(&mut receiver, "the RDMA offer").await?;
    match kind_of(&reply) {
        Some(ACCEPT) => {
            let theirs = decode_offer(&reply)?;
            if let Some(mismatch) = offer.mismatch(&theirs) {
                return Err(RdmaError::Handshake(format!("the server accepted, but {mismatch}")));
            }
            let connection = setup.finish(&theirs.endpoint, theirs.recv_buffers, &theirs.large, peer)?;
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
    let theirs = match decode_offer(&first) {
        Ok(theirs) => theirs,
        Err(err @ RdmaError::PeerRefused { .. }) => {
            let reason = err.to_string();
            sender.send(encode(REFUSE, None, &reason)).await?;
            return Ok(Accepted::Tcp { sender, receiver, first: None, reason: Some(reason) });
        }
        Err(err) => return Err(err),
    };
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
    let ours = Offer::new(&setup, config);
    if let Some(mismatch) = ours.mismatch(&theirs) {
        let reason = format!("the client's settings do not match: {mismatch}");
        sender.send(encode(REFUSE, None, &reason)).await?;
        return Ok(Accepted::Tcp { sender, receiver, first: None, reason: Some(reason) });
    }
    let connection = setup.finish(&theirs.endpoint, theirs.recv_buffers, &theirs.large, peer)?;
    sender.send(encode(ACCEPT, Some(&ours), "")).await?;
    let ready = recv(&mut receiver, "the client's confirmation").await?;
    if kind_of(&ready) != Some(READY) {
        return Err(RdmaError::Handshake("the client did not confirm its queue pair".into()));
    }
    Ok(Accepted::Rdma(connection.attach(sender, receiver)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_and_frames_are_not_handshakes() {
        let large = vec![
            Advertised { size: 1 << 20, count: 4, addr: 0x7f00_0000_1000, rkey: 0x1234 },
            Advertised { size: (16 << 20) + 4096, count: 2, addr: 0x7f00_1000_0000, rkey: 0x5678 },
        ];
        let offer = Offer {
            endpoint: QpEndpoint { qpn: 0x11, psn: 0x22, gid: [7; 16], mtu: 1024, lid: 0, link: Link::Ethernet },
            recv_buffers: 64,
            buffer_size: 131_072,
            large,
        };
        let message = encode(HELLO, Some(&offer), "").freeze();
        assert_eq!(kind_of(&message), Some(HELLO));
        let back = decode_offer(&message).expect("decodes");
        assert_eq!(back.endpoint, offer.endpoint);
        assert_eq!((back.recv_buffers, back.buffer_size), (64, 131_072));
        assert_eq!(back.large, offer.large);
        assert_eq!(offer.mismatch(&back), None);
        let mut fewer = back.clone();
        fewer.large.pop();
        assert!(offer.mismatch(&fewer).is_some_and(|m| m.contains("large classes")));
        let truncated = message.slice(..message.len() - 1);
        assert!(matches!(decode_offer(&truncated), Err(RdmaError::Handshake(_))));
        assert_eq!(kind_of(&[1, 3, 0, 0]), None, "an rdma-rpc frame starts with version 1");
        assert!(decode_offer(&Bytes::from_static(b"RDMARPC\x01\x02short")).is_err());
        // Version 1 (no version byte: the qpn's high byte, 0, stands there) is refused by name.
        let old = Bytes::from_static(b"RDMARPC\x01\x00\x00\x00\x11rest");
        assert!(matches!(decode_offer(&old), Err(RdmaError::PeerRefused { reason }) if reason.contains("version 0")));
    }

    /// An offer from an InfiniBand port: LID 0x1234, port GID fe80::2:c903:a:1.
    fn infiniband_offer() -> Offer {
        let mut gid = [0u8; 16];
        gid[..2].copy_from_slice(&[0xfe, 0x80]);
        gid[8..].copy_from_slice(&[0x00, 0x02, 0xc9, 0x03, 0x00, 0x0a, 0x00, 0x01]);
        Offer {
            endpoint: QpEndpoint { qpn: 0x0abc, psn: 0x00ff_0001, gid, mtu: 4096, lid: 0x1234, link: Link::InfiniBand },
            recv_buffers: 16,
            buffer_size: 65_536,
            large: vec![Advertised { size: 1 << 20, count: 1, addr: 0x1000, rkey: 9 }],
        }
    }

    #[test]
    fn infiniband_lid_and_link_layer_round_trip() {
        let offer = infiniband_offer();
        for kind in [HELLO, ACCEPT] {
            let message = encode(kind, Some(&offer), "").freeze();
            assert_eq!(kind_of(&message), Some(kind));
            let back = decode_offer(&message).expect("decodes");
            assert_eq!(back.endpoint, offer.endpoint);
            assert_eq!((back.endpoint.lid, back.endpoint.link), (0x1234, Link::InfiniBand));
            assert_eq!(offer.mismatch(&back), None);
        }
        // The LID and link layer sit right after the MTU: offset magic + kind + version + 4 + 4 + 16 + 4.
        let message = encode(HELLO, Some(&offer), "").freeze();
        let at = MAGIC.len() + 2 + 28;
        assert_eq!(&message[at..at + 3], &[0x12, 0x34, 2]);
        let mut unknown = message.to_vec();
        unknown[at + 2] = 7;
        let err = decode_offer(&Bytes::from(unknown)).expect_err("unknown link layer");
        assert!(matches!(&err, RdmaError::Handshake(m) if m.contains("unknown link layer 7")), "{err}");
    }

    #[test]
    fn version_2_offers_are_refused_by_name_and_link_layers_must_agree() {
        // A version 2 hello (no LID, no link layer) is refused with the reason, so the server
        // answers REFUSE and both sides stay on TCP.
        let mut v2 = encode(HELLO, Some(&infiniband_offer()), "").freeze().to_vec();
        v2[MAGIC.len() + 1] = 2;
        let err = decode_offer(&Bytes::from(v2)).expect_err("old version");
        assert!(err.is_unavailable(), "a version mismatch falls back to TCP: {err}");
        assert!(err.to_string().contains("version 2, this side speaks 3"), "{err}");
        let ib = infiniband_offer();
        let mut roce = ib.clone();
        roce.endpoint.link = Link::Ethernet;
        roce.endpoint.lid = 0;
        let mismatch = ib.mismatch(&roce).expect("RoCE and InfiniBand differ");
        assert!(mismatch.contains("link layers differ (peer Ethernet (RoCE), here InfiniBand)"), "{mismatch}");
        let mut no_lid = ib.clone();
        no_lid.endpoint.lid = 0;
        let mismatch = ib.mismatch(&no_lid).expect("an InfiniBand peer without a LID is refused");
        assert!(mismatch.contains("LID 0x0 is not a unicast LID"), "{mismatch}");
    }
}
