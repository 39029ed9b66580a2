//! An established RDMA connection and its three parts, as the RPC layer's `Transport` needs them:
//! [`RdmaAlloc`] hands out registered send buffers, [`RdmaSender`] posts them (batched, one doorbell
//! per flush, selectively signaled, within the peer's credit), [`RdmaReceiver`] yields received
//! messages as `Bytes` over registered receive buffers.
//!
//! Credit: the peer posted `recv_buffers` receives; every SEND consumes one. Each SEND carries, as
//! its immediate value, how many receives this side re-posted since it last said so. One credit is
//! kept for credit-only (zero-length) messages, so returning credit never waits for credit.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rdma_rpc_transport_tcp::{TcpReceiver, TcpSender};
use tokio::sync::{Notify, mpsc};

use crate::poller;
use crate::verbs::{CompletionQueue, OpenDevice, QpEndpoint, RcQueuePair, Region, SendRequest, SlotWriter};
use crate::{RdmaConfig, RdmaError};

/// Signal at least every this many sends, so unsignaled slots come back in time.
const SIGNAL_EVERY: u64 = 16;

#[derive(Debug, Default)]
pub(crate) struct Credits {
    /// Sends the peer can take now (its posted receives we have not used).
    pub(crate) available: u32,
    /// Receives this side re-posted and has not announced yet.
    pub(crate) owed: u32,
    /// Sends posted so far (for selective signaling).
    pub(crate) posted: u64,
}

/// State shared by the parts of a connection and its poller. The QP is the first field: it is
/// destroyed before anything else goes.
pub(crate) struct Inner {
    pub(crate) qp: Mutex<RcQueuePair>,
    pub(crate) send_region: Arc<Region>,
    pub(crate) recv_region: Arc<Region>,
    pub(crate) credits: Mutex<Credits>,
    pub(crate) credit_changed: Notify,
    pub(crate) closed: Mutex<Option<String>>,
    pub(crate) closing: Notify,
    pub(crate) config: RdmaConfig,
    pub(crate) device: String,
    pub(crate) peer: SocketAddr,
    pub(crate) qp_num: u32,
}

/// Locks a mutex, recovering from poisoning (a panicked holder leaves plain counters behind).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    /// Marks the connection closed (first reason wins) and wakes everyone.
    pub(crate) fn close(&self, reason: String) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some(reason);
        }
        drop(closed);
        self.closing.notify_one();
        self.credit_changed.notify_waiters();
    }

    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }
}

/// Resources created before the peer's details are known: device, buffers, CQ, QP in INIT with
/// every receive posted.
pub(crate) struct Setup {
    device: OpenDevice,
    cq: CompletionQueue,
    qp: RcQueuePair,
    send_region: Arc<Region>,
    recv_region: Arc<Region>,
    local: QpEndpoint,
    config: RdmaConfig,
}

impl Setup {
    pub(crate) fn new(config: &RdmaConfig, local_ip: IpAddr, psn: u32) -> Result<Self, RdmaError> {
        let device = crate::verbs::open_for_address(config.device.as_deref(), local_ip)?;
        let send_region = Region::new(&device.pd, config.buffer_size, config.send_buffers)?;
        let recv_region = Region::new(&device.pd, config.buffer_size, config.recv_buffers)?;
        let cq = CompletionQueue::new(&device, config.send_buffers + config.recv_buffers + 16)?;
        let mut qp = RcQueuePair::new(&device, &cq, config.send_buffers + 8, config.recv_buffers, config.max_inline)?;
        qp.post_recv(recv_region.take_all())?;
        let local = qp.endpoint(&device, psn);
        Ok(Setup { device, cq, qp, send_region, recv_region, local, config: config.clone() })
    }

    pub(crate) fn endpoint(&self) -> QpEndpoint {
        self.local
    }

    /// Connects the QP to the peer's; `peer_recv_buffers` is the initial credit.
    pub(crate) fn finish(
        mut self,
        remote: &QpEndpoint,
        peer_recv_buffers: u32,
        peer: SocketAddr,
    ) -> Result<Connected, RdmaError> {
        self.qp.connect(&self.local, remote)?;
        let qp_num = self.qp.qp_num();
        tracing::debug!(device = %self.device.name, qp = qp_num, peer_qp = remote.qpn, %peer, "RDMA queue pair ready");
        let inner = Inner {
            qp: Mutex::new(self.qp),
            send_region: self.send_region,
            recv_region: self.recv_region,
            credits: Mutex::new(Credits { available: peer_recv_buffers, owed: 0, posted: 0 }),
            credit_changed: Notify::new(),
            closed: Mutex::new(None),
            closing: Notify::new(),
            config: self.config,
            device: self.device.name.clone(),
            peer,
            qp_num,
        };
        Ok(Connected { inner: Arc::new(inner), cq: self.cq, _device: self.device })
    }
}

/// A connected QP whose tasks have not started yet.
pub(crate) struct Connected {
    inner: Arc<Inner>,
    cq: CompletionQueue,
    _device: OpenDevice,
}

impl Connected {
    /// Starts the poller and the liveness watch on the TCP connection.
    pub(crate) fn attach(self, tcp_sender: TcpSender, tcp_receiver: TcpReceiver) -> RdmaConnection {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(poller::run(self.inner.clone(), self.cq, tx));
        tokio::spawn(poller::watch_liveness(self.inner.clone(), tcp_receiver));
        RdmaConnection { inner: self.inner, tcp: tcp_sender, incoming: rx }
    }
}

/// An RDMA connection, before it is split into its parts.
pub struct RdmaConnection {
    inner: Arc<Inner>,
    tcp: TcpSender,
    incoming: mpsc::UnboundedReceiver<Result<Bytes, RdmaError>>,
}

impl std::fmt::Debug for RdmaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConnection")
            .field("device", &self.inner.device)
            .field("qp", &self.inner.qp_num)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl RdmaConnection {
    /// The peer's address (of the TCP control connection).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The local device's name.
    pub fn device(&self) -> &str {
        &self.inner.device
    }

    /// Largest message: one registered buffer.
    pub fn max_message_size(&self) -> usize {
        self.inner.config.buffer_size
    }

    /// Splits into the allocator, the sending half and the receiving half.
    pub fn split(self) -> (RdmaAlloc, RdmaSender, RdmaReceiver) {
        let alloc = RdmaAlloc { region: self.inner.send_region.clone() };
        let sender = RdmaSender { inner: self.inner.clone(), tcp: self.tcp, queue: Vec::new() };
        let receiver = RdmaReceiver { inner: self.inner, incoming: self.incoming };
        (alloc, sender, receiver)
    }
}

/// Hands out registered send buffers; waits when all are in flight.
#[derive(Clone)]
pub struct RdmaAlloc {
    region: Arc<Region>,
}

/// Send buffers kept for control frames and headers: application data waits once only this many
/// are free.
const CONTROL_RESERVE: usize = 4;

impl RdmaAlloc {
    /// A registered buffer with room for `capacity` bytes, for application data: waits while all
    /// but the control reserve are in use.
    pub async fn alloc(&self, capacity: usize) -> Result<SlotWriter, RdmaError> {
        self.check(capacity)?;
        let reserve = CONTROL_RESERVE.min(self.region.slots().saturating_sub(1) as usize);
        Ok(SlotWriter::new(self.region.take(reserve).await))
    }

    /// A registered buffer now, reserve included, or `None` when every buffer is in use.
    pub fn try_alloc(&self, capacity: usize) -> Option<Result<SlotWriter, RdmaError>> {
        if let Err(err) = self.check(capacity) {
            return Some(Err(err));
        }
        self.region.try_take().map(|slot| Ok(SlotWriter::new(slot)))
    }

    fn check(&self, capacity: usize) -> Result<(), RdmaError> {
        if capacity > self.region.slot_size() {
            return Err(RdmaError::TooLarge { len: capacity, max: self.region.slot_size() });
        }
        Ok(())
    }
}

/// The sending half.
pub struct RdmaSender {
    inner: Arc<Inner>,
    tcp: TcpSender,
    queue: Vec<SlotWriter>,
}

impl RdmaSender {
    /// Queues a message; no IO until `flush`.
    pub fn feed(&mut self, buf: SlotWriter) -> Result<(), RdmaError> {
        if let Some(reason) = self.inner.closed_reason() {
            return Err(RdmaError::Closed(reason));
        }
        self.queue.push(buf);
        Ok(())
    }

    /// Queues `head` followed by `payload`: the payload is copied into the registered buffer (it
    /// is not registered memory itself).
    pub fn feed_with_payload(&mut self, mut head: SlotWriter, payload: Bytes) -> Result<(), RdmaError> {
        let total = head.len() + payload.len();
        if total > self.inner.send_region.slot_size() {
            return Err(RdmaError::TooLarge { len: total, max: self.inner.send_region.slot_size() });
        }
        bytes::BufMut::put_slice(&mut head, &payload);
        self.feed(head)
    }

    /// Posts everything queued, in batches as the peer's credit allows.
    pub async fn flush(&mut self) -> Result<(), RdmaError> {
        while !self.queue.is_empty() {
            let (count, imm, first_seq) = self.reserve().await?;
            let requests = self
                .queue
                .drain(..count)
                .enumerate()
                .map(|(i, buf)| {
                    let seq = first_seq + i as u64;
                    SendRequest {
                        signaled: i + 1 == count || seq % SIGNAL_EVERY == SIGNAL_EVERY - 1,
                        imm: if i == 0 { imm } else { 0 },
                        slot: Some(buf.slot),
                    }
                })
                .collect();
            if let Err(err) = lock(&self.inner.qp).post_send(requests) {
                self.inner.close(err.to_string());
                return Err(err);
            }
        }
        Ok(())
    }

    /// Waits for credit; takes it for up to the queued messages. Returns (count, credit to
    /// announce, sequence number of the first).
    async fn reserve(&self) -> Result<(usize, u32, u64), RdmaError> {
        loop {
            let notified = self.inner.credit_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.inner.closed_reason() {
                return Err(RdmaError::Closed(reason));
            }
            {
                let mut credits = lock(&self.inner.credits);
                // One credit stays for credit-only messages.
                if credits.available >= 2 {
                    let count = self.queue.len().min(credits.available as usize - 1);
                    credits.available -= count as u32;
                    let imm = std::mem::take(&mut credits.owed);
                    let first = credits.posted;
                    credits.posted += count as u64;
                    return Ok((count, imm, first));
                }
            }
            notified.await;
        }
    }

    /// Flushes, waits until every send completed, then closes the TCP control connection (the
    /// peer sees the end there).
    pub async fn close(&mut self) -> Result<(), RdmaError> {
        let flushed = self.flush().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let notified = self.inner.credit_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner.qp).sends_in_flight() == 0 || self.inner.closed_reason().is_some() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let _ = self.tcp.shutdown().await;
        self.inner.close("closed locally".into());
        flushed
    }
}

impl Drop for RdmaSender {
    fn drop(&mut self) {
        self.inner.close("closed locally".into());
    }
}

/// The receiving half.
pub struct RdmaReceiver {
    inner: Arc<Inner>,
    incoming: mpsc::UnboundedReceiver<Result<Bytes, RdmaError>>,
}

impl RdmaReceiver {
    /// The next message, `None` once the connection closed cleanly. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, RdmaError> {
        match self.incoming.recv().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(err)) => Err(err),
            None => Ok(None),
        }
    }
}

impl Drop for RdmaReceiver {
    fn drop(&mut self) {
        self.inner.close("closed locally".into());
    }
}
