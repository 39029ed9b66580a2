//! Encoding messages into transport buffers and decoding them from received `Bytes`.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::pb::rpc as pb;
use crate::status::Status;
use crate::transport::{BufferAlloc, SendBuffer};
use crate::wire::HEADER_LEN;

/// Encodes a CALL body (room for the header, the length-delimited call header, then the first
/// message if any) straight into a transport buffer.
pub(crate) async fn encode_call<A: BufferAlloc, M: Message>(
    alloc: &A,
    header: &pb::CallHeader,
    message: Option<&M>,
) -> Result<A::Buf, Status> {
    let header_len = header.encoded_len();
    let total = HEADER_LEN
        + prost::encoding::encoded_len_varint(header_len as u64)
        + header_len
        + message.map_or(0, Message::encoded_len);
    let mut buf = alloc.alloc(total).await.map_err(transport_status)?;
    let writer = buf.writer();
    writer.put_bytes(0, HEADER_LEN);
    header.encode_length_delimited(writer).map_err(encode_status)?;
    if let Some(message) = message {
        message.encode(writer).map_err(encode_status)?;
    }
    Ok(buf)
}

/// Encodes one message after `HEADER_LEN` bytes of room, straight into a transport buffer.
pub(crate) async fn encode_message<A: BufferAlloc, M: Message>(alloc: &A, message: &M) -> Result<A::Buf, Status> {
    let mut buf = alloc.alloc(HEADER_LEN + message.encoded_len()).await.map_err(transport_status)?;
    let writer = buf.writer();
    writer.put_bytes(0, HEADER_LEN);
    message.encode(writer).map_err(encode_status)?;
    Ok(buf)
}

/// Encodes a message into fresh heap bytes (server replies; sent behind a separate header).
pub(crate) fn encode_to_bytes<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    // Cannot fail: the buffer was sized by `encoded_len` and BytesMut grows anyway.
    let _ = message.encode(&mut buf);
    buf.freeze()
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
