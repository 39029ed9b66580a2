//! An established RDMA connection and its three parts, as the RPC layer's `Transport` needs them:
//! [`RdmaAlloc`] hands out registered send buffers, [`RdmaSender`] posts them (`sender.rs`), and
//! [`RdmaReceiver`] yields received messages as `Bytes` over registered receive buffers (small
//! ones copied out: see `reap.rs`; the receiver itself is in `receiver.rs`).
//!
//! Credit: the peer posted `recv_buffers` receives; every SEND and every WRITE-with-immediate
//! consumes one. Each SEND carries, as its immediate value, how many receives this side re-posted
//! since it last said so. One credit is kept for credit-only (zero-length) messages, so returning
//! credit never waits for credit. Large messages also need one of the peer's large buffers
//! (`large.rs`), which the peer hands back one zero-length SEND per buffer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rdma_rpc_transport_tcp::{TcpReceiver, TcpSender};
use tokio::sync::{Notify, mpsc};

use crate::large::{Advertised, LargeRecv, RemoteBuffers};
use crate::poller;
use crate::reap::{Lease, Reaper};
use crate::receiver::RdmaReceiver;
use crate::sender::{RdmaAlloc, RdmaSender};
use crate::verbs::{Access, CompletionQueue, OpenDevice, QpEndpoint, RcQueuePair, Region};
use crate::{RdmaConfig, RdmaError};

pub(crate) struct Credits {
    /// Sends the peer can take now (its posted receives we have not used).
    pub(crate) available: u32,
    /// Receives this side re-posted and has not announced yet.
    pub(crate) owed: u32,
    /// Sends posted so far (for selective signaling).
    pub(crate) posted: u64,
    /// The peer's large buffers this side may write now.
    pub(crate) remote: RemoteBuffers,
}

/// State shared by the parts of a connection and its poller. The QP is the first field: it is
/// destroyed before anything else goes (lent large buffers included). Lock order: `reaper`, then
/// `qp`, then `large_recv`, then `credits`.
pub(crate) struct Inner {
    pub(crate) qp: Mutex<RcQueuePair>,
    /// The CQ and the receiver's queue, for whoever reaps (`reap.rs`).
    pub(crate) reaper: Mutex<Reaper>,
    /// Whether the receiver is spinning on the CQ itself.
    pub(crate) lease: Lease,
    pub(crate) large_recv: Mutex<LargeRecv>,
    /// The regions of `large_recv`, to see without its lock whether one has a buffer back.
    large_recv_regions: Vec<Arc<Region>>,
    pub(crate) send_region: Arc<Region>,
    pub(crate) recv_region: Arc<Region>,
    /// One send region per large class, smallest first.
    pub(crate) large_send: Vec<Arc<Region>>,
    pub(crate) credits: Mutex<Credits>,
    pub(crate) credit_changed: Notify,
    pub(crate) closed: Mutex<Option<String>>,
    /// Set with `closed`: read without a lock on every spin.
    is_closed: AtomicBool,
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
        self.is_closed.store(true, Ordering::Release);
        drop(closed);
        self.closing.notify_one();
        self.credit_changed.notify_waiters();
    }

    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    /// The error a closed connection's operations return (check [`is_closed`](Self::is_closed)
    /// first: that is lock-free, this is not).
    pub(crate) fn closed_error(&self) -> RdmaError {
        RdmaError::Closed(self.closed_reason().unwrap_or_else(|| "closed".into()))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Whether a receive buffer, or a large buffer the peer wrote into, came back from the
    /// application since it was last re-posted or lent again (lock-free: counters only).
    pub(crate) fn buffers_freed(&self) -> bool {
        self.recv_region.free_count() > 0 || self.large_recv_regions.iter().any(|region| region.free_count() > 0)
    }
}

/// Resources created before the peer's details are known: device, buffers, CQ, QP in INIT with
/// every receive posted.
pub(crate) struct Setup {
    device: OpenDevice,
    cq: CompletionQueue,
    qp: RcQueuePair,
    large_recv: LargeRecv,
    send_region: Arc<Region>,
    recv_region: Arc<Region>,
    large_send: Vec<Arc<Region>>,
    local: QpEndpoint,
    config: RdmaConfig,
}

impl Setup {
    pub(crate) fn new(config: &RdmaConfig, local_ip: IpAddr, psn: u32) -> Result<Self, RdmaError> {
        config.check_limits()?;
        let device = crate::verbs::open_for_address(config.device.as_deref(), local_ip)?;
        crate::verbs::check_memlock(config.registered_bytes())?;
        let send_region = Region::new(&device.pd, config.buffer_size, config.send_buffers)?;
        let recv_freed = Arc::new(Notify::new());
        let recv_region = Region::with_access(
            &device.pd,
            config.buffer_size,
            config.recv_buffers,
            Access::Local,
            recv_freed.clone(),
        )?;
        let large_send = config
            .large_classes
            .iter()
            .map(|class| Region::with_mixed_waiters(&device.pd, class.size, class.count))
            .collect::<Result<Vec<_>, _>>()?;
        let large_recv = LargeRecv::new(&device.pd, &config.large_classes, &recv_freed)?;
        let large = config.large_buffers();
        let cq = CompletionQueue::new(&device, config.send_buffers + config.recv_buffers + 2 * large + 32)?;
        let send_depth = config.send_buffers + large + 16;
        let mut qp = RcQueuePair::new(&device, &cq, send_depth, config.recv_buffers, config.max_inline)?;
        qp.post_recv(recv_region.take_all())?;
        let local = qp.endpoint(&device, psn);
        let config = config.clone();
        Ok(Setup { device, cq, qp, large_recv, send_region, recv_region, large_send, local, config })
    }

    pub(crate) fn endpoint(&self) -> QpEndpoint {
        self.local
    }

    /// This side's large receive buffers, for the handshake.
    pub(crate) fn advertised(&self) -> Vec<Advertised> {
        self.large_recv.advertised()
    }

    /// Connects the QP to the peer's; `peer_recv_buffers` is the initial credit and
    /// `peer_large` the large buffers the peer lends.
    pub(crate) fn finish(
        mut self,
        remote: &QpEndpoint,
        peer_recv_buffers: u32,
        peer_large: &[Advertised],
        peer: SocketAddr,
    ) -> Result<Connected, RdmaError> {
        self.qp.connect(&self.local, remote)?;
        let qp_num = self.qp.qp_num();
        tracing::debug!(device = %self.device.name, qp = qp_num, peer_qp = remote.qpn, %peer, "RDMA queue pair ready");
        let credits =
            Credits { available: peer_recv_buffers, owed: 0, posted: 0, remote: RemoteBuffers::new(peer_large) };
        let (incoming, rx) = mpsc::unbounded_channel();
        let reaper = Reaper {
            cq: self.cq.poller(),
            completions: Vec::with_capacity(64),
            incoming: Some(incoming),
            claimed: None,
            repost_due: false,
            small: crate::reap::Small::new(),
        };
        let inner = Inner {
            qp: Mutex::new(self.qp),
            reaper: Mutex::new(reaper),
            lease: Lease::new(),
            large_recv_regions: self.large_recv.regions().to_vec(),
            large_recv: Mutex::new(self.large_recv),
            send_region: self.send_region,
            recv_region: self.recv_region,
            large_send: self.large_send,
            credits: Mutex::new(credits),
            credit_changed: Notify::new(),
            closed: Mutex::new(None),
            is_closed: AtomicBool::new(false),
            closing: Notify::new(),
            config: self.config,
            device: self.device.name.clone(),
            peer,
            qp_num,
        };
        Ok(Connected { inner: Arc::new(inner), cq: self.cq, incoming: rx, _device: self.device })
    }
}

/// A connected QP whose tasks have not started yet.
pub(crate) struct Connected {
    inner: Arc<Inner>,
    cq: CompletionQueue,
    incoming: mpsc::UnboundedReceiver<Result<Bytes, RdmaError>>,
    _device: OpenDevice,
}

impl Connected {
    /// Starts the poller and the liveness watch on the TCP connection.
    pub(crate) fn attach(self, tcp_sender: TcpSender, tcp_receiver: TcpReceiver) -> RdmaConnection {
        tokio::spawn(poller::run(self.inner.clone(), self.cq));
        tokio::spawn(poller::watch_liveness(self.inner.clone(), tcp_receiver));
        RdmaConnection { inner: self.inner, tcp: tcp_sender, incoming: self.incoming }
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

    /// Largest message: the largest large-buffer class (or one slot, without large classes).
    pub fn max_message_size(&self) -> usize {
        self.inner.config.max_message_size()
    }

    /// Largest message sent inline in the work request: what the device granted of
    /// `RdmaConfig::max_inline` (0 when inline sends are off or unsupported).
    pub fn max_inline_size(&self) -> usize {
        lock(&self.inner.qp).max_inline() as usize
    }

    /// Splits into the allocator, the sending half and the receiving half.
    pub fn split(self) -> (RdmaAlloc, RdmaSender, RdmaReceiver) {
        let alloc = RdmaAlloc::new(&self.inner);
        let sender = RdmaSender::new(self.inner.clone(), self.tcp);
        let receiver = RdmaReceiver::new(self.inner, self.incoming);
        (alloc, sender, receiver)
    }
}
