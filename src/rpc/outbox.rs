//! The driver's sending side: owns the transport's sending half, encodes control frames,
//! back-patches headers into data frames, and writes them in batches, all from the driver's own
//! task (no writer task, no hop per frame).
//!
//! The driver feeds every frame the session releases with [`Outbox::push`] (no IO), then polls
//! [`Outbox::drive`] inside its `select!` next to the receiver. `drive` is cancel-safe (it relies on
//! the transports' cancel-safe `flush` and `alloc`), so a full socket or an exhausted credit window
//! never stops the driver from reading: two peers sending at each other cannot deadlock.

use super::command::Outgoing;
use crate::session::Transmit;
use crate::transport::{BufferAlloc, FrameSender, SendBuffer, TransportError};
use crate::wire::{FrameHeader, HEADER_LEN};

/// A connection's outgoing frames between the session and the transport.
pub(crate) struct Outbox<A: BufferAlloc, S> {
    alloc: A,
    sender: S,
    /// A frame that needs a buffer of its own (a control frame, a header) when none was free:
    /// nothing more is taken from the session until it has one, so frames keep their order.
    stalled: Option<Transmit<Outgoing<A::Buf>>>,
    /// Frames were fed since the last completed flush.
    dirty: bool,
}

impl<A, S> Outbox<A, S>
where
    A: BufferAlloc,
    S: FrameSender<Buf = A::Buf>,
{
    pub(crate) fn new(alloc: A, sender: S) -> Self {
        Outbox { alloc, sender, stalled: None, dirty: false }
    }

    /// Whether the next frame can be pushed now (no frame waits for a buffer).
    pub(crate) fn accepts(&self) -> bool {
        self.stalled.is_none()
    }

    /// Whether [`drive`](Self::drive) has work: frames to write or a frame waiting for a buffer.
    pub(crate) fn wants_drive(&self) -> bool {
        self.dirty || self.stalled.is_some()
    }

    /// Queues a frame without IO. When it needs a buffer and none is free, it is kept until
    /// `drive` gets one (call only when [`accepts`](Self::accepts)).
    pub(crate) fn push(&mut self, transmit: Transmit<Outgoing<A::Buf>>) -> Result<(), TransportError> {
        match needs_buffer(&transmit) {
            None => self.encode(transmit, None),
            Some(capacity) => match self.alloc.try_alloc(capacity) {
                Some(buf) => self.encode(transmit, Some(buf?)),
                None => {
                    self.stalled = Some(transmit);
                    Ok(())
                }
            },
        }
    }

    /// Writes what was queued, then (if a frame waits for a buffer) waits for one: the flush is
    /// what frees buffers, so it comes first. Cancel-safe: nothing is lost when dropped.
    pub(crate) async fn drive(&mut self) -> Result<(), TransportError> {
        if self.dirty {
            self.sender.flush().await?;
            self.dirty = false;
        }
        if let Some(capacity) = self.stalled.as_ref().and_then(needs_buffer) {
            // Any free buffer, the control reserve included: the frames that hold the others may be
            // queued behind this one.
            let buf = self.alloc.alloc_control(capacity).await?;
            if let Some(transmit) = self.stalled.take() {
                self.encode(transmit, Some(buf))?;
            }
        }
        Ok(())
    }

    /// [`drive`](Self::drive) without waiting, for a driver that polls instead of awaiting
    /// (`direct`): `flush` is the transport's own non-waiting flush (true once everything
    /// queued is posted), and a stalled frame gets a buffer only if one is free now.
    pub(crate) fn drive_now(
        &mut self,
        flush: impl FnOnce(&mut S) -> Result<bool, TransportError>,
    ) -> Result<(), TransportError> {
        if self.dirty && flush(&mut self.sender)? {
            self.dirty = false;
        }
        if let Some(capacity) = self.stalled.as_ref().and_then(needs_buffer)
            && let Some(buf) = self.alloc.try_alloc(capacity)
            && let Some(transmit) = self.stalled.take()
        {
            self.encode(transmit, Some(buf?))?;
        }
        Ok(())
    }

    /// The allocator frames are encoded with.
    pub(crate) fn alloc(&self) -> &A {
        &self.alloc
    }

    /// Writes everything queued and closes the sending direction.
    pub(crate) async fn close(&mut self) -> Result<(), TransportError> {
        while self.wants_drive() {
            self.drive().await?;
        }
        self.sender.close().await
    }

    /// Feeds one frame to the transport; `buf` is the buffer [`needs_buffer`] asked for.
    fn encode(&mut self, transmit: Transmit<Outgoing<A::Buf>>, buf: Option<A::Buf>) -> Result<(), TransportError> {
        let missing = || TransportError::Other("no buffer for a frame that needs one".into());
        self.dirty = true;
        match transmit {
            Transmit::Control(frame) => {
                let mut buf = buf.ok_or_else(missing)?;
                frame.encode(buf.writer());
                self.sender.feed(buf)
            }
            Transmit::Data { header, body: Outgoing::Buf(mut body) } => {
                patch_header(&header, &mut body)?;
                self.sender.feed(body)
            }
            Transmit::Data { header, body: Outgoing::Framed(mut framed) } => {
                let head = buf.ok_or_else(missing)?;
                let room = framed
                    .get_mut(..HEADER_LEN)
                    .and_then(|s| <&mut [u8; HEADER_LEN]>::try_from(s).ok())
                    .ok_or_else(|| TransportError::Other("framed body has no room for the header".into()))?;
                header.write_to(room);
                self.sender.feed_owned(head, framed)
            }
            Transmit::Data { header, body: Outgoing::Bytes(payload) } => {
                let mut head = buf.ok_or_else(missing)?;
                header.encode(head.writer());
                self.sender.feed_with_payload(head, payload)
            }
        }
    }
}

/// The capacity of the buffer a frame needs from the allocator, if any: control frames are
/// encoded into one, payloads held as `Bytes` go behind one (a framed reply's header is already
/// in its bytes, so its buffer stays empty, but RDMA copies the reply into it).
fn needs_buffer<B>(transmit: &Transmit<Outgoing<B>>) -> Option<usize> {
    match transmit {
        Transmit::Control(frame) => Some(frame.encoded_len()),
        Transmit::Data { body: Outgoing::Buf(_), .. } => None,
        Transmit::Data { body: Outgoing::Framed(_), .. } => Some(0),
        Transmit::Data { body: Outgoing::Bytes(_), .. } => Some(HEADER_LEN),
    }
}

/// Writes the header into the `HEADER_LEN` bytes of room the encoder left at the front.
fn patch_header<B: SendBuffer>(header: &FrameHeader, buf: &mut B) -> Result<(), TransportError> {
    let room = buf
        .written_mut()
        .get_mut(..HEADER_LEN)
        .and_then(|s| <&mut [u8; HEADER_LEN]>::try_from(s).ok())
        .ok_or_else(|| TransportError::Other("send buffer has no room for the frame header".into()))?;
    header.write_to(room);
    Ok(())
}
