//! The RDMA transport: the `Transport` trait over the `transport-rdma` crate. Send buffers are
//! registered memory (prost encodes straight into what the NIC reads), received messages are
//! `Bytes` over registered receive buffers that are re-posted when the last view drops (those of
//! at most 512 bytes are copied into a reused chunk instead, which costs less than the handle's
//! allocation, and their buffer goes back to be re-posted at once). Messages
//! larger than a slot travel by RDMA WRITE into large buffers the peer lent, so the session's
//! frame limit is the largest large-buffer class (16 MiB + 4 KiB by default), not one slot.

use bytes::Bytes;
pub use rdma_rpc_transport_rdma::{
    Accepted, LargeClass, Negotiated, PollMode, RdmaAlloc, RdmaConfig, RdmaConnection, RdmaError, RdmaReceiver,
    RdmaSender, SlotWriter, accept, connect, verbs,
};

use super::{BufferAlloc, Capabilities, FrameReceiver, FrameSender, SendBuffer, Transport, TransportError};

impl SendBuffer for SlotWriter {
    type Writer = SlotWriter;
    fn writer(&mut self) -> &mut SlotWriter {
        self
    }
    fn len(&self) -> usize {
        SlotWriter::len(self)
    }
    fn written_mut(&mut self) -> &mut [u8] {
        SlotWriter::written_mut(self)
    }
    fn truncate(&mut self, len: usize) {
        SlotWriter::truncate(self, len);
    }
    fn from_reply(body: super::ReplyBody) -> Result<Self, super::ReplyBody> {
        match body {
            super::ReplyBody::Registered(slot) => Ok(slot),
            other => Err(other),
        }
    }
}

impl BufferAlloc for RdmaAlloc {
    type Buf = SlotWriter;
    async fn alloc(&self, capacity: usize) -> Result<SlotWriter, TransportError> {
        Ok(RdmaAlloc::alloc(self, capacity).await?)
    }

    fn try_alloc(&self, capacity: usize) -> Option<Result<SlotWriter, TransportError>> {
        RdmaAlloc::try_alloc(self, capacity).map(|r| r.map_err(TransportError::from))
    }

    async fn alloc_control(&self, capacity: usize) -> Result<SlotWriter, TransportError> {
        Ok(RdmaAlloc::alloc_control(self, capacity).await?)
    }

    fn reply_alloc(&self) -> super::ReplyAlloc {
        super::ReplyAlloc::Registered(self.clone())
    }
}

impl FrameSender for RdmaSender {
    type Buf = SlotWriter;

    fn feed(&mut self, buf: SlotWriter) -> Result<(), TransportError> {
        Ok(RdmaSender::feed(self, buf)?)
    }

    fn feed_with_payload(&mut self, head: SlotWriter, payload: Bytes) -> Result<(), TransportError> {
        Ok(RdmaSender::feed_with_payload(self, head, payload)?)
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        Ok(RdmaSender::flush(self).await?)
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        Ok(RdmaSender::close(self).await?)
    }
}

impl FrameReceiver for RdmaReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        Ok(RdmaReceiver::recv(self).await?)
    }

    fn try_recv_now(&mut self, may_read: bool) -> Option<Result<Option<Bytes>, TransportError>> {
        if may_read {
            return futures_util::FutureExt::now_or_never(RdmaReceiver::recv(self)).map(|m| m.map_err(Into::into));
        }
        // In lockstep: a reaping step now would re-post the buffer of the message just taken
        // before its reply goes out.
        self.try_recv_reaped().map(|m| m.map_err(Into::into))
    }
}

impl Transport for RdmaConnection {
    type Buf = SlotWriter;
    type Alloc = RdmaAlloc;
    type Sender = RdmaSender;
    type Receiver = RdmaReceiver;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "rdma",
            max_message_size: self.max_message_size(),
            max_inline_size: self.max_inline_size(),
            zero_copy_send: true,
            zero_copy_recv: true,
        }
    }

    fn peer(&self) -> String {
        format!("rdma://{} ({})", self.peer_addr(), self.device())
    }

    fn split(self) -> (RdmaAlloc, RdmaSender, RdmaReceiver) {
        RdmaConnection::split(self)
    }
}
