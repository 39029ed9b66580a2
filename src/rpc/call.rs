//! The handles of a call in progress: [`CallReceiver`] (messages and data coming in, both sides),
//! [`CallSender`] (client side, encodes into transport buffers) and [`ResponseSender`] (server
//! side).
//!
//! Dropping a client's `CallReceiver` before the call ended cancels it (the server is told and its
//! handler aborted). Dropping a sender without `finish` half-closes its direction.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::Message;
use tokio::sync::oneshot;

use super::client::Client;
use super::codec;
use super::command::{BufCommand, CallCommand, CallEvent, CallRef};
use super::events::After;
use super::mailbox::Ctl;
use crate::status::Status;
use crate::transport::ReplyAlloc;
use crate::transport::{SendBuffer, Transport};
use crate::wire::{HEADER_LEN, Kind};

/// One item of a call's incoming stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An encoded protobuf message.
    Message(Bytes),
    /// Raw stream data.
    Data(Bytes),
}

/// The receiving side of a call: responses for a client, requests for a server.
#[derive(Debug)]
pub struct CallReceiver<M> {
    id: u64,
    ctl: Ctl,
    shared: CallRef,
    /// A client's call: dropping the receiver before the call ended cancels it.
    cancel_on_drop: bool,
    done: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Drop for CallReceiver<M> {
    fn drop(&mut self) {
        if self.cancel_on_drop {
            let status = Status::cancelled("the caller dropped the call");
            let _ = self.ctl.send(CallCommand::Finish { id: self.id, status });
        }
    }
}

impl<M: Message + Default> CallReceiver<M> {
    pub(crate) fn new(id: u64, ctl: Ctl, shared: CallRef, cancel_on_drop: bool) -> Self {
        CallReceiver { id, ctl, shared, cancel_on_drop, done: false, _message: PhantomData }
    }

    /// The call's shared state.
    pub(crate) fn shared(&self) -> &CallRef {
        &self.shared
    }

    /// The call id on its connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message, `Ok(None)` when the peer's stream ended cleanly, or the status the call
    /// failed with.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        match self.next().await? {
            None => Ok(None),
            Some(Incoming::Message(bytes)) => codec::decode::<M>(bytes).map(Some),
            Some(Incoming::Data(_)) => Err(Status::invalid_argument("raw stream data on a call that carries messages")),
        }
    }

    /// The next raw item (message bytes or stream data), without decoding.
    pub async fn next(&mut self) -> Result<Option<Incoming>, Status> {
        if self.done {
            return match self.shared.status.get() {
                Some(status) if !status.is_ok() => Err(status.clone()),
                _ => Ok(None),
            };
        }
        // Credit for the peer's last message is not returned: it may send nothing more, and the
        // session ignores credit for a call the peer has half-closed.
        let event = self.shared.next_event_and_after().await;
        match event {
            Some((CallEvent::Message(bytes), after)) => {
                self.consumed(bytes.len(), after);
                Ok(Some(Incoming::Message(bytes)))
            }
            Some((CallEvent::Data(bytes), after)) => {
                self.consumed(bytes.len(), after);
                Ok(Some(Incoming::Data(bytes)))
            }
            Some((CallEvent::End, _)) => {
                self.done = true;
                Ok(None)
            }
            Some((CallEvent::Closed(status), _)) => {
                self.done = true;
                self.disarm();
                if status.is_ok() { Ok(None) } else { Err(status) }
            }
            None => {
                self.done = true;
                self.disarm();
                Err(self.shared.status_or(|| Status::unavailable("connection closed")))
            }
        }
    }

    /// The next chunk of raw stream data, `Ok(None)` at the end.
    pub async fn data(&mut self) -> Result<Option<Bytes>, Status> {
        match self.next().await? {
            None => Ok(None),
            Some(Incoming::Data(bytes)) => Ok(Some(bytes)),
            Some(Incoming::Message(_)) => Err(Status::invalid_argument("a message where stream data was expected")),
        }
    }

    /// Waits for the single reply of a client-streaming call, after the request stream finished.
    pub async fn response(mut self) -> Result<M, Status> {
        let reply = self.message().await?;
        // Drain to the call's end so its status is known.
        while self.message().await?.is_some() {}
        reply.ok_or_else(|| Status::internal("the server ended the call without a reply"))
    }

    /// Returns credit for a message taken, unless the peer sends nothing more; notes the end
    /// when it came with the message.
    fn consumed(&mut self, len: usize, after: After) {
        match after {
            After::More => {
                let _ = self.ctl.send(CallCommand::Consumed { id: self.id, len });
            }
            After::Ended => self.done = true,
            // As a `Closed` event: what comes next is the status, already in `shared`.
            After::Closed => {
                self.done = true;
                self.disarm();
            }
            After::Closing => {}
        }
    }

    fn disarm(&mut self) {
        self.cancel_on_drop = false;
    }
}

/// Half-closes a direction when dropped without `finish`.
#[derive(Debug)]
struct HalfClose {
    id: u64,
    ctl: Ctl,
    armed: bool,
}

impl Drop for HalfClose {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.ctl.send(CallCommand::End { id: self.id });
        }
    }
}

/// Client side: sends the request stream, encoding each message straight into a transport buffer.
/// Each `send` returns once the previous frame passed flow control, so a slow peer slows the
/// producer and memory in flight stays bounded.
pub struct CallSender<T: Transport, M> {
    client: Client<T>,
    id: u64,
    shared: CallRef,
    last_ack: Option<oneshot::Receiver<()>>,
    half_close: HalfClose,
    _message: PhantomData<fn(M)>,
}

impl<T: Transport, M: Message> CallSender<T, M> {
    pub(crate) fn new(client: Client<T>, id: u64, shared: CallRef) -> Self {
        let half_close = HalfClose { id, ctl: client.ctl().clone(), armed: true };
        CallSender { client, id, shared, last_ack: None, half_close, _message: PhantomData }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &M) -> Result<(), Status> {
        self.wait_previous().await?;
        let body = codec::encode_message(self.client.alloc(), message).await?;
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        self.client
            .send_buf(BufCommand::Send { id: self.id, kind: Kind::Message, body, end: false, ack: Some(ack) })
            .map_err(|_| self.ended())
    }

    /// Sends raw stream data; the bytes are not copied on their way to the transport.
    pub async fn send_data(&mut self, data: Bytes) -> Result<(), Status> {
        self.wait_previous().await?;
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        let cmd = CallCommand::SendBytes { id: self.id, kind: Kind::Data, body: data, end: false, ack: Some(ack) };
        self.client.ctl().send(cmd).map_err(|_| self.ended())
    }

    /// A transport buffer to fill with stream data and pass to [`CallSender::send_data_buffer`]:
    /// for RDMA it is registered memory, so data read into it (from a file, a pipe, `zfs send`)
    /// reaches the NIC without another copy. Holds at most `capacity` bytes (and no more than
    /// the transport's buffer size).
    pub async fn data_buffer(&self, capacity: usize) -> Result<DataBuffer<T::Buf>, Status> {
        let mut buf = crate::transport::BufferAlloc::alloc(self.client.alloc(), HEADER_LEN + capacity)
            .await
            .map_err(|err| Status::resource_exhausted(format!("no send buffer of {capacity} bytes: {err}")))?;
        buf.writer().put_bytes(0, HEADER_LEN);
        Ok(DataBuffer { buf, capacity })
    }

    /// Sends a filled [`DataBuffer`] as stream data, without copying it.
    pub async fn send_data_buffer(&mut self, data: DataBuffer<T::Buf>) -> Result<(), Status> {
        self.wait_previous().await?;
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        let cmd = BufCommand::Send { id: self.id, kind: Kind::Data, body: data.buf, end: false, ack: Some(ack) };
        self.client.send_buf(cmd).map_err(|_| self.ended())
    }

    /// Sends a filled [`DataBuffer`] that holds one encoded message of type `M` (built in place,
    /// e.g. a replication chunk whose data was read straight into it), without copying it.
    pub async fn send_encoded(&mut self, message: DataBuffer<T::Buf>) -> Result<(), Status> {
        self.wait_previous().await?;
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        let cmd = BufCommand::Send { id: self.id, kind: Kind::Message, body: message.buf, end: false, ack: Some(ack) };
        self.client.send_buf(cmd).map_err(|_| self.ended())
    }

    /// Ends the request stream and waits until everything sent passed flow control.
    pub async fn finish(mut self) -> Result<(), Status> {
        self.half_close.armed = false;
        // Returns once the last frame passed flow control, as documented; the half-close queues
        // behind it in the mailbox either way.
        self.wait_previous().await?;
        let _ = self.client.ctl().send(CallCommand::End { id: self.id });
        Ok(())
    }

    async fn wait_previous(&mut self) -> Result<(), Status> {
        match self.last_ack.take() {
            Some(ack) => ack.await.map_err(|_| self.ended()),
            None => Ok(()),
        }
    }

    fn ended(&self) -> Status {
        self.shared.status_or(|| Status::unavailable("connection closed"))
    }
}

/// A transport send buffer being filled with stream data (see [`CallSender::data_buffer`]).
#[derive(Debug)]
pub struct DataBuffer<B> {
    buf: B,
    capacity: usize,
}

impl<B: SendBuffer> DataBuffer<B> {
    /// Data bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Whether no data was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room left.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len()
    }

    /// Appends bytes.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let n = data.len().min(self.remaining());
        self.buf.writer().put_slice(&data[..n]);
    }

    /// Appends `n` zero bytes and returns them, to be read or decoded into.
    pub fn append_zeroed(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.remaining());
        let start = self.buf.len();
        self.buf.writer().put_bytes(0, n);
        &mut self.buf.written_mut()[start..start + n]
    }

    /// Keeps the first `len` data bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(HEADER_LEN + len);
    }

    /// The data bytes written so far, to back-patch them.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf.written_mut()[HEADER_LEN..]
    }

    /// One `read` from `reader` straight into the buffer; returns the bytes read (0 at the end).
    pub fn read_from(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<usize> {
        let start = self.buf.len();
        let room = self.remaining();
        self.buf.writer().put_bytes(0, room);
        let read = reader.read(&mut self.buf.written_mut()[start..start + room]);
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        read
    }
}

/// Server side: sends the response stream of a streaming call.
#[derive(Debug)]
pub struct ResponseSender<M> {
    id: u64,
    ctl: Ctl,
    shared: CallRef,
    replies: Arc<ReplyAlloc>,
    last_ack: Option<oneshot::Receiver<()>>,
    _message: PhantomData<fn(M)>,
}

impl<M: Message> ResponseSender<M> {
    pub(crate) fn new(id: u64, ctl: Ctl, shared: CallRef, replies: Arc<ReplyAlloc>) -> Self {
        ResponseSender { id, ctl, shared, replies, last_ack: None, _message: PhantomData }
    }

    /// Sends one message, encoded into the transport's own send memory (over RDMA a registered
    /// buffer, so it is not copied again).
    pub async fn send(&mut self, message: &M) -> Result<(), Status> {
        self.wait_previous().await?;
        let body = self.replies.encode(message);
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        let cmd = CallCommand::SendReply { id: self.id, body, ack };
        self.ctl.send(cmd).map_err(|_| self.ended())
    }

    /// Sends raw stream data, not copied on its way to the transport.
    pub async fn send_data(&mut self, data: Bytes) -> Result<(), Status> {
        self.send_bytes(Kind::Data, data).await
    }

    /// Sends one message of type `M` that the caller already encoded (e.g. built in place).
    pub async fn send_encoded(&mut self, message: Bytes) -> Result<(), Status> {
        self.send_bytes(Kind::Message, message).await
    }

    async fn wait_previous(&mut self) -> Result<(), Status> {
        if let Some(ack) = self.last_ack.take() {
            ack.await.map_err(|_| self.ended())?;
        }
        Ok(())
    }

    async fn send_bytes(&mut self, kind: Kind, body: Bytes) -> Result<(), Status> {
        self.wait_previous().await?;
        let (ack, rx) = oneshot::channel();
        self.last_ack = Some(rx);
        let cmd = CallCommand::SendBytes { id: self.id, kind, body, end: false, ack: Some(ack) };
        self.ctl.send(cmd).map_err(|_| self.ended())
    }

    fn ended(&self) -> Status {
        self.shared.status_or(|| Status::cancelled("the call is over"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rpc::events::{CallPool, EventSender};
    use crate::rpc::mailbox::{Command, Mailbox};

    type Buf = crate::transport::mem::MemBuf;

    fn receiver(mailbox: &Arc<Mailbox<Buf>>) -> (CallReceiver<crate::pb::echo::EchoReply>, EventSender) {
        let shared = CallPool::default().take();
        let events = EventSender::new(shared.clone());
        (CallReceiver::new(7, Ctl::new(mailbox), shared, true), events)
    }

    #[tokio::test]
    async fn a_finished_call_leaves_nothing_behind_and_a_dropped_one_is_cancelled() {
        let mailbox = Mailbox::<Buf>::new();
        // Finished: the reply and the call's end, then dropped. No cancel, no reference kept.
        let (mut call, events) = receiver(&mailbox);
        events.close_after(Some(CallEvent::Message(Bytes::new())), CallEvent::Closed(Status::ok()));
        assert!(call.message().await.expect("reply").is_some());
        assert!(call.message().await.expect("end").is_none());
        drop(call);
        assert!(mailbox.pop().is_none(), "a finished call is not cancelled");
        assert_eq!(Arc::strong_count(&mailbox), 1, "the call's handle to the mailbox was released");
        // Dropped before its end: the driver is told to cancel it.
        let (call, _events) = receiver(&mailbox);
        drop(call);
        match mailbox.pop() {
            Some(Command::Ctl(CallCommand::Finish { id: 7, status })) => {
                assert_eq!(status.code, crate::status::Code::Cancelled);
            }
            _ => panic!("a Finish(Cancelled) for call 7 was expected"),
        }
        assert_eq!(Arc::strong_count(&mailbox), 1);
    }
}
