//! The writer task: owns a connection's sending half, encodes control frames, back-patches headers
//! into data frames, and flushes in batches (everything queued at the moment goes out in one
//! vectored write, up to a cap).

use tokio::sync::mpsc;

use super::command::Outgoing;
use crate::session::Transmit;
use crate::transport::{BufferAlloc, FrameSender, SendBuffer, TransportError};
use crate::wire::{FrameHeader, HEADER_LEN};

/// Frames to queue before a flush even when more are waiting, so one busy connection does not
/// hold a huge batch.
const MAX_BATCH: usize = 256;

/// Writes frames until the driver drops its end of the queue, then closes the sending direction.
pub(crate) async fn write_loop<A, S>(
    alloc: A,
    mut sender: S,
    mut frames: mpsc::UnboundedReceiver<Transmit<Outgoing<A::Buf>>>,
) -> Result<(), TransportError>
where
    A: BufferAlloc,
    S: FrameSender<Buf = A::Buf>,
{
    while let Some(first) = frames.recv().await {
        feed(&alloc, &mut sender, first).await?;
        let mut batched = 1;
        while batched < MAX_BATCH {
            match frames.try_recv() {
                Ok(next) => feed(&alloc, &mut sender, next).await?,
                Err(_) => break,
            }
            batched += 1;
        }
        sender.flush().await?;
    }
    sender.close().await
}

async fn feed<A, S>(alloc: &A, sender: &mut S, transmit: Transmit<Outgoing<A::Buf>>) -> Result<(), TransportError>
where
    A: BufferAlloc,
    S: FrameSender<Buf = A::Buf>,
{
    match transmit {
        Transmit::Control(frame) => {
            let mut buf = buffer(alloc, sender, frame.encoded_len()).await?;
            frame.encode(buf.writer());
            sender.feed(buf)
        }
        Transmit::Data { header, body: Outgoing::Buf(mut buf) } => {
            patch_header(&header, &mut buf)?;
            sender.feed(buf)
        }
        Transmit::Data { header, body: Outgoing::Framed(framed) } => match framed.try_into_mut() {
            // Always the case: the reply's bytes were made for this frame and are not shared.
            Ok(mut framed) => {
                let room = framed
                    .get_mut(..HEADER_LEN)
                    .and_then(|s| <&mut [u8; HEADER_LEN]>::try_from(s).ok())
                    .ok_or_else(|| TransportError::Other("framed body has no room for the header".into()))?;
                header.write_to(room);
                let head = buffer(alloc, sender, 0).await?;
                sender.feed_with_payload(head, framed.freeze())
            }
            Err(framed) => {
                let mut head = buffer(alloc, sender, HEADER_LEN).await?;
                header.encode(head.writer());
                sender.feed_with_payload(head, framed.slice(HEADER_LEN.min(framed.len())..))
            }
        },
        Transmit::Data { header, body: Outgoing::Bytes(payload) } => {
            let mut head = buffer(alloc, sender, HEADER_LEN).await?;
            header.encode(head.writer());
            sender.feed_with_payload(head, payload)
        }
    }
}

/// A buffer for the writer's own frames. When none is free, the buffers fed so far are flushed
/// first: they are what frees buffers, so waiting without flushing could wait forever.
async fn buffer<A, S>(alloc: &A, sender: &mut S, capacity: usize) -> Result<A::Buf, TransportError>
where
    A: BufferAlloc,
    S: FrameSender<Buf = A::Buf>,
{
    if let Some(buf) = alloc.try_alloc(capacity) {
        return buf;
    }
    sender.flush().await?;
    alloc.alloc(capacity).await
}

/// Writes the header into the `HEADER_LEN` bytes of room the encoder left at the front.
pub(crate) fn patch_header<B: SendBuffer>(header: &FrameHeader, buf: &mut B) -> Result<(), TransportError> {
    let room = buf
        .written_mut()
        .get_mut(..HEADER_LEN)
        .and_then(|s| <&mut [u8; HEADER_LEN]>::try_from(s).ok())
        .ok_or_else(|| TransportError::Other("send buffer has no room for the frame header".into()))?;
    header.write_to(room);
    Ok(())
}
