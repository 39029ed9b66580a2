//! IO-free deframing: splits a byte stream of `u32`-big-endian-length-prefixed
//! frames into messages.
//!
//! The [`Deframer`] never performs IO and never panics, whatever bytes it is
//! given; it is what the receiver drives and what a fuzz target exercises.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::config::u32_max_as_usize;
use crate::error::TcpError;

/// Size of the length prefix in front of every message, in bytes.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Splits length-prefixed frames off the front of a [`BytesMut`].
///
/// It holds no bytes itself: the caller appends received data to its buffer
/// and calls [`decode`](Self::decode) until it returns `Ok(None)`. A frame
/// stays in the buffer, prefix included, until it is complete.
#[derive(Debug, Clone)]
pub struct Deframer {
    max_message_size: usize,
}

impl Deframer {
    /// A deframer rejecting messages longer than `max_message_size` bytes
    /// (length prefix excluded).
    pub fn new(max_message_size: usize) -> Self {
        Self { max_message_size }
    }

    /// The largest message length this deframer accepts.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Takes one complete message from the front of `buf`, if present.
    ///
    /// The announced length is checked against the maximum *before* anything
    /// is reserved, so an oversized prefix fails with
    /// [`TcpError::MessageTooLarge`] and leaves `buf` untouched. When the
    /// prefix announces more than is buffered, the missing capacity is reserved
    /// once, so a large message is then read without repeated reallocation.
    ///
    /// The returned [`Bytes`] shares `buf`'s allocation (no copy).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, TcpError> {
        let Some(len) = self.announced_len(buf)? else {
            return Ok(None);
        };
        let frame_len = frame_len(len);
        if buf.len() < frame_len {
            if buf.capacity() < frame_len {
                buf.reserve(frame_len - buf.len());
            }
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// How many more bytes `buf` needs before [`decode`](Self::decode) can
    /// make progress: the rest of the length prefix, or the rest of the
    /// announced frame. `0` when a complete frame (or an oversized prefix,
    /// which `decode` will report) is buffered.
    pub fn bytes_needed(&self, buf: &BytesMut) -> usize {
        match self.announced_len(buf) {
            Ok(Some(len)) => frame_len(len).saturating_sub(buf.len()),
            Ok(None) => LENGTH_PREFIX_LEN.saturating_sub(buf.len()),
            Err(_) => 0,
        }
    }

    /// Total size, length prefix included, of the frame at the front of `buf`
    /// as far as it is known: the prefix length while the prefix is incomplete.
    pub(crate) fn pending_frame_len(&self, buf: &BytesMut) -> usize {
        match read_prefix(buf) {
            Some(len) => frame_len(len),
            None => LENGTH_PREFIX_LEN,
        }
    }

    /// Appends `message` to `dst` as one frame (length prefix + bytes).
    ///
    /// This copies; it exists for tests, fuzzing and tools. The sender does
    /// not use it. Fails with [`TcpError::MessageTooLarge`] if the message
    /// cannot be described by a `u32` prefix.
    pub fn encode(message: &[u8], dst: &mut BytesMut) -> Result<(), TcpError> {
        let len = u32::try_from(message.len())
            .map_err(|_| TcpError::MessageTooLarge { len: message.len(), max: u32_max_as_usize() })?;
        dst.reserve(LENGTH_PREFIX_LEN + message.len());
        dst.put_u32(len);
        dst.put_slice(message);
        Ok(())
    }

    /// The validated message length announced at the front of `buf`, if the
    /// whole prefix is there.
    fn announced_len(&self, buf: &BytesMut) -> Result<Option<usize>, TcpError> {
        match read_prefix(buf) {
            Some(len) if len > self.max_message_size => {
                Err(TcpError::MessageTooLarge { len, max: self.max_message_size })
            }
            other => Ok(other),
        }
    }
}

/// The (unvalidated) length in the prefix at the front of `buf`, if complete.
fn read_prefix(buf: &[u8]) -> Option<usize> {
    let prefix = buf.first_chunk::<LENGTH_PREFIX_LEN>()?;
    // A `u32` always fits in `usize` on the targets tokio supports; saturate
    // otherwise so the maximum check rejects it.
    Some(usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX))
}

/// Frame size for a message of `len` bytes, saturating instead of overflowing.
fn frame_len(len: usize) -> usize {
    len.saturating_add(LENGTH_PREFIX_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(messages: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        for message in messages {
            Deframer::encode(message, &mut out).expect("small message encodes");
        }
        out
    }

    #[test]
    fn exact_split_yields_the_message_and_empties_the_buffer() {
        let mut deframer = Deframer::new(1024);
        let mut buf = encoded(&[b"hello"]);
        let msg = deframer.decode(&mut buf).expect("valid frame");
        assert_eq!(msg.as_deref(), Some(&b"hello"[..]));
        assert!(buf.is_empty());
        assert_eq!(deframer.decode(&mut buf).expect("empty buffer"), None);
        assert_eq!(deframer.bytes_needed(&buf), LENGTH_PREFIX_LEN);
    }

    #[test]
    fn byte_by_byte_feeding() {
        let mut deframer = Deframer::new(1024);
        let wire = encoded(&[b"abc", b"", b"defgh"]);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &byte in wire.iter() {
            assert!(deframer.bytes_needed(&buf) > 0);
            buf.put_u8(byte);
            while let Some(msg) = deframer.decode(&mut buf).expect("valid stream") {
                out.push(msg);
            }
        }
        assert_eq!(out, [&b"abc"[..], b"", b"defgh"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn several_messages_in_one_buffer_and_a_partial_tail() {
        let mut deframer = Deframer::new(1024);
        let mut buf = encoded(&[b"one", b"two", b"three"]);
        buf.put_slice(&[0, 0, 0, 9, b'x']); // 1 of 9 bytes of a fourth frame
        for expected in [&b"one"[..], b"two", b"three"] {
            let msg = deframer.decode(&mut buf).expect("valid frame");
            assert_eq!(msg.as_deref(), Some(expected));
        }
        assert_eq!(deframer.decode(&mut buf).expect("partial frame"), None);
        assert_eq!(deframer.bytes_needed(&buf), 8);
        assert_eq!(deframer.pending_frame_len(&buf), 13);
        assert!(buf.capacity() >= 13, "missing capacity reserved");
    }

    #[test]
    fn empty_message() {
        let mut deframer = Deframer::new(0);
        let mut buf = encoded(&[b""]);
        let msg = deframer.decode(&mut buf).expect("an empty message is valid");
        assert_eq!(msg.as_deref(), Some(&b""[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn length_over_max_is_rejected_without_allocation() {
        let mut deframer = Deframer::new(16);
        let mut buf = BytesMut::with_capacity(8);
        buf.put_u32(u32::MAX);
        let capacity = buf.capacity();
        let err = deframer.decode(&mut buf).expect_err("oversized length");
        assert!(matches!(
            err,
            TcpError::MessageTooLarge { len, max: 16 } if len == u32_max_as_usize()
        ));
        assert_eq!(buf.capacity(), capacity, "nothing reserved");
        assert_eq!(buf.len(), LENGTH_PREFIX_LEN, "buffer untouched");
        assert_eq!(deframer.bytes_needed(&buf), 0);

        // Exactly the maximum is fine.
        let mut buf = encoded(&[&[7; 16]]);
        let msg = deframer.decode(&mut buf).expect("at the limit");
        assert_eq!(msg.map(|m| m.len()), Some(16));
    }

    #[test]
    fn large_message_reserves_the_missing_capacity_once() {
        let mut deframer = Deframer::new(1 << 20);
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(100_000);
        buf.put_slice(&[1; 10]);
        assert_eq!(deframer.decode(&mut buf).expect("partial"), None);
        assert!(buf.capacity() >= 100_004);
        let capacity = buf.capacity();
        let mut chunks = 0;
        while deframer.bytes_needed(&buf) > 0 {
            let n = deframer.bytes_needed(&buf).min(7_000);
            buf.put_bytes(1, n);
            assert_eq!(buf.capacity(), capacity, "no reallocation while filling");
            chunks += 1;
            if deframer.bytes_needed(&buf) > 0 {
                assert_eq!(deframer.decode(&mut buf).expect("partial"), None);
            }
        }
        assert!(chunks > 1);
        let msg = deframer.decode(&mut buf).expect("complete").expect("a message");
        assert_eq!(msg.len(), 100_000);
    }

    #[test]
    fn decoded_bytes_share_the_read_buffer() {
        let mut deframer = Deframer::new(1024);
        let mut buf = encoded(&[b"zero-copy"]);
        let start = buf.as_ptr() as usize;
        let msg = deframer.decode(&mut buf).expect("valid").expect("a message");
        assert_eq!(msg.as_ptr() as usize, start + LENGTH_PREFIX_LEN);
    }

    proptest! {
        #[test]
        fn random_messages_in_random_chunks_round_trip(
            messages in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 0..40),
            chunk_sizes in proptest::collection::vec(1usize..64, 1..20),
        ) {
            let mut wire = BytesMut::new();
            for message in &messages {
                Deframer::encode(message, &mut wire).expect("small message encodes");
            }
            let mut deframer = Deframer::new(300);
            let mut buf = BytesMut::new();
            let mut out: Vec<Bytes> = Vec::new();
            let mut sizes = chunk_sizes.iter().cycle();
            while !wire.is_empty() {
                let size = sizes.next().copied().unwrap_or(1).min(wire.len());
                buf.extend_from_slice(&wire.split_to(size));
                while let Some(msg) = deframer.decode(&mut buf).expect("valid stream") {
                    out.push(msg);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out.len(), messages.len());
            for (got, want) in out.iter().zip(&messages) {
                prop_assert_eq!(&got[..], &want[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            max in 0usize..1024,
        ) {
            let mut deframer = Deframer::new(max);
            let mut buf = BytesMut::from(&data[..]);
            let before = buf.len();
            let mut consumed = 0;
            while let Ok(Some(msg)) = deframer.decode(&mut buf) {
                prop_assert!(msg.len() <= max);
                consumed += msg.len() + LENGTH_PREFIX_LEN;
            }
            prop_assert_eq!(consumed + buf.len(), before);
        }
    }
}
