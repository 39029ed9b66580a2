//! Encoding messages into transport buffers and decoding them from received `Bytes`.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{self, WireType};

use crate::status::Status;
use crate::transport::{BufferAlloc, SendBuffer};
use crate::wire::HEADER_LEN;

/// An `rpc.CallHeader` borrowed from the caller. It encodes byte for byte as `pb::CallHeader`
/// does (fields in tag order, proto3 defaults omitted), without first copying the method path
/// into a `String`: one heap allocation per call less.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallHeaderRef<'a> {
    /// "/package.Service/Method".
    pub(crate) method: &'a str,
    /// Relative timeout in µs; 0 = none.
    pub(crate) timeout_micros: u64,
    /// Application metadata.
    pub(crate) metadata: &'a BTreeMap<String, String>,
}

impl CallHeaderRef<'_> {
    /// The encoded length, without the length prefix.
    fn encoded_len(&self) -> usize {
        let method = match self.method.len() {
            0 => 0,
            len => encoding::key_len(1) + encoding::encoded_len_varint(len as u64) + len,
        };
        let timeout = match self.timeout_micros {
            0 => 0,
            micros => encoding::uint64::encoded_len(2, &micros),
        };
        let metadata = match self.metadata.is_empty() {
            true => 0,
            false => encoding::btree_map::encoded_len(
                encoding::string::encoded_len,
                encoding::string::encoded_len,
                3,
                self.metadata,
            ),
        };
        method + timeout + metadata
    }

    /// Writes the length prefix (`len`: [`encoded_len`](Self::encoded_len)), then the message.
    /// The prefix and the method's key and length go out as one slice: a transport buffer's
    /// `put_u8` checks its capacity byte by byte, and this is on every call's path.
    fn encode_length_delimited(&self, len: usize, buf: &mut impl BufMut) {
        // Two varints (at most 10 bytes each for a u64) and a one-byte key.
        const HEAD: usize = 21;
        let mut head = [0u8; HEAD];
        let mut free = &mut head[..];
        encoding::encode_varint(len as u64, &mut free);
        if !self.method.is_empty() {
            encoding::encode_key(1, WireType::LengthDelimited, &mut free);
            encoding::encode_varint(self.method.len() as u64, &mut free);
        }
        let used = HEAD - free.len();
        buf.put_slice(&head[..used]);
        buf.put_slice(self.method.as_bytes());
        if self.timeout_micros != 0 {
            encoding::uint64::encode(2, &self.timeout_micros, buf);
        }
        if !self.metadata.is_empty() {
            encoding::btree_map::encode(
                encoding::string::encode,
                encoding::string::encoded_len,
                encoding::string::encode,
                encoding::string::encoded_len,
                3,
                self.metadata,
                buf,
            );
        }
    }
}

/// Encodes a CALL body (room for the header, the length-delimited call header, then the first
/// message if any) straight into a transport buffer.
pub(crate) async fn encode_call<A: BufferAlloc, M: Message>(
    alloc: &A,
    header: CallHeaderRef<'_>,
    message: Option<&M>,
) -> Result<A::Buf, Status> {
    let mut buf = alloc.alloc(call_len(&header, message)).await.map_err(transport_status)?;
    write_call(&mut buf, header, message)?;
    Ok(buf)
}

/// The bytes a CALL frame of `header` and `message` takes, its frame header included.
pub(crate) fn call_len<M: Message>(header: &CallHeaderRef<'_>, message: Option<&M>) -> usize {
    let header_len = header.encoded_len();
    HEADER_LEN
        + prost::encoding::encoded_len_varint(header_len as u64)
        + header_len
        + message.map_or(0, Message::encoded_len)
}

/// Writes a CALL body into `buf`, which has room for [`call_len`] bytes.
pub(crate) fn write_call<B: SendBuffer, M: Message>(
    buf: &mut B,
    header: CallHeaderRef<'_>,
    message: Option<&M>,
) -> Result<(), Status> {
    let writer = buf.writer();
    writer.put_bytes(0, HEADER_LEN);
    header.encode_length_delimited(header.encoded_len(), writer);
    if let Some(message) = message {
        message.encode(writer).map_err(encode_status)?;
    }
    Ok(())
}

/// Encodes one message after `HEADER_LEN` bytes of room, straight into a transport buffer.
pub(crate) async fn encode_message<A: BufferAlloc, M: Message>(alloc: &A, message: &M) -> Result<A::Buf, Status> {
    let mut buf = alloc.alloc(HEADER_LEN + message.encoded_len()).await.map_err(transport_status)?;
    let writer = buf.writer();
    writer.put_bytes(0, HEADER_LEN);
    message.encode(writer).map_err(encode_status)?;
    Ok(buf)
}

/// Decodes a message from the bytes of a received frame (zero copy for `bytes` fields).
pub(crate) fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|err| {
        Status::invalid_argument(format!("message does not decode as {}: {err}", std::any::type_name::<M>()))
    })
}

fn transport_status(err: crate::transport::TransportError) -> Status {
    Status::unavailable(format!("no send buffer: {err}"))
}

fn encode_status(err: prost::EncodeError) -> Status {
    Status::internal(format!("encoding into the send buffer failed: {err}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message as _;

    use super::CallHeaderRef;
    use crate::pb::rpc as pb;

    #[test]
    fn borrowed_call_header_encodes_like_prost() {
        let metadata = BTreeMap::from([("trace-id".to_string(), "4bf92f3577b34da6".to_string())]);
        let none = BTreeMap::new();
        for (method, timeout_micros, metadata) in [
            ("/rdmarpc.echo.Echo/Echo", 5_000_000, &metadata),
            ("", 0, &none),
            ("/m", 1, &none),
            ("/a/b", 0, &metadata),
        ] {
            let owned = pb::CallHeader { method: method.into(), timeout_micros, metadata: metadata.clone() };
            let mut borrowed = Vec::new();
            let header = CallHeaderRef { method, timeout_micros, metadata };
            header.encode_length_delimited(header.encoded_len(), &mut borrowed);
            assert_eq!(borrowed, owned.encode_length_delimited_to_vec(), "{method:?} {timeout_micros}");
        }
    }
}
