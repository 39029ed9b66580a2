//! [`SendBuf`]: the buffer a message is written into before it is sent.

use bytes::{Bytes, BytesMut};

/// The body of one outgoing message.
///
/// The 4-byte length prefix is *not* stored in the buffer: the sender
/// computes it when the message is queued and writes it as a separate
/// `IoSlice` of the same `writev`, so the body is never copied or shifted.
/// Write the message through [`body_mut`](Self::body_mut) (a [`BytesMut`],
/// which implements [`bytes::BufMut`], so e.g. prost can encode into it), and
/// backpatch a header already written with [`as_mut_slice`](Self::as_mut_slice).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendBuf {
    body: BytesMut,
}

impl SendBuf {
    /// An empty buffer able to hold `cap` message bytes (length prefix not
    /// counted) before it needs to grow.
    pub fn with_capacity(cap: usize) -> Self {
        Self { body: BytesMut::with_capacity(cap) }
    }

    /// Message bytes written so far (length prefix not counted).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether no message byte has been written yet.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The message bytes written so far, mutable (e.g. to backpatch a header).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.body
    }

    /// The message bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.body
    }

    /// The message body, to write into with [`bytes::BufMut`]. Everything in
    /// it is sent; it never contains the length prefix.
    pub fn body_mut(&mut self) -> &mut BytesMut {
        &mut self.body
    }

    /// Discards the bytes written so far, keeping the capacity.
    pub fn clear(&mut self) {
        self.body.clear();
    }

    /// The message body as a `BytesMut` (no copy).
    pub fn into_inner(self) -> BytesMut {
        self.body
    }

    /// The message body, frozen (no copy).
    pub fn freeze(self) -> Bytes {
        self.body.freeze()
    }
}

impl From<BytesMut> for SendBuf {
    /// Uses `body` as the whole message (no copy).
    fn from(body: BytesMut) -> Self {
        Self { body }
    }
}

impl From<&[u8]> for SendBuf {
    /// Copies `message` into a new buffer.
    fn from(message: &[u8]) -> Self {
        Self { body: BytesMut::from(message) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn writes_through_buf_mut_and_backpatches() {
        let mut buf = SendBuf::with_capacity(16);
        assert!(buf.is_empty());
        assert!(buf.body_mut().capacity() >= 16);
        buf.body_mut().put_u32(0); // placeholder header
        buf.body_mut().put_slice(b"payload");
        assert_eq!(buf.len(), 11);
        let len = u32::try_from(buf.len() - 4).expect("small");
        buf.as_mut_slice().get_mut(..4).expect("header written").copy_from_slice(&len.to_be_bytes());
        assert_eq!(buf.as_slice(), b"\0\0\0\x07payload");
        assert_eq!(buf.clone().freeze(), Bytes::from_static(b"\0\0\0\x07payload"));
        buf.clear();
        assert!(buf.is_empty());
    }

    #[test]
    fn conversions_keep_the_bytes() {
        assert_eq!(SendBuf::from(&b"abc"[..]).as_slice(), b"abc");
        assert_eq!(SendBuf::from(BytesMut::from(&b"xy"[..])).len(), 2);
        assert_eq!(SendBuf::default().len(), 0);
    }
}
