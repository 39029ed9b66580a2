//! Message-oriented transport over TCP for `rdma-rpc`: the fallback used when
//! no RDMA device is available.
//!
//! This crate carries *opaque messages* (byte strings) between two peers over a
//! tokio [`tokio::net::TcpStream`]. It knows nothing about RPC: the layer above
//! puts its own frame header inside each message.
//!
//! # Framing
//!
//! Every message on the socket is a 4-byte **big-endian `u32` length** followed
//! by exactly that many bytes of message:
//!
//! ```text
//! +----------------+---------------------------+
//! | len: u32 (BE)  | message: len bytes        |
//! +----------------+---------------------------+
//! ```
//!
//! A length of 0 is a valid, empty message. A length above
//! [`TcpConfig::max_message_size`] is rejected with
//! [`TcpError::MessageTooLarge`] *before* any buffer is allocated for it, so a
//! hostile peer cannot make the receiver reserve gigabytes.
//!
//! # Zero copy
//!
//! * **Send:** a message is written into a [`SendBuf`] (its
//!   [`SendBuf::body_mut`] is a [`bytes::BytesMut`], which implements
//!   [`bytes::BufMut`], so e.g. prost can encode straight into it). The buffer
//!   keeps room for the length prefix in front of the body, so prefix and body
//!   leave as one `IoSlice`; an optional payload [`bytes::Bytes`] follows as
//!   another, so neither the body nor the payload is copied.
//!   Messages are queued with [`TcpSender::feed`] and written in batches by
//!   [`TcpSender::flush`] (up to 16 slices per system call).
//! * **Receive:** [`TcpReceiver::recv`] returns each message as a
//!   [`bytes::Bytes`] that owns its slice of the read buffer (`split_to` +
//!   `freeze`), without copying it.
//!
//! The framing logic itself lives in the IO-free [`Deframer`], which is what a
//! fuzz target drives.
//!
//! # Usage
//!
//! ```
//! use bytes::BufMut;
//! use rdma_rpc_transport_tcp::{TcpConfig, TcpConnection, TcpError, TcpListener};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), TcpError> {
//! let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await?;
//! let addr = listener.local_addr()?;
//!
//! let server = tokio::spawn(async move {
//!     let conn = listener.accept().await?;
//!     let (mut tx, mut rx) = conn.split();
//!     // Echo every message back until the peer closes cleanly.
//!     while let Some(msg) = rx.recv().await? {
//!         let mut buf = tx.buffer(msg.len());
//!         buf.body_mut().put_slice(&msg);
//!         tx.send(buf).await?;
//!     }
//!     tx.shutdown().await
//! });
//!
//! let (mut tx, mut rx) = TcpConnection::connect(addr, TcpConfig::default()).await?.split();
//! let mut buf = tx.buffer(5);
//! buf.body_mut().put_slice(b"hello");
//! tx.feed(buf)?; // queued, no IO yet
//! tx.flush().await?; // one writev for everything queued
//! assert_eq!(rx.recv().await?.as_deref(), Some(&b"hello"[..]));
//! tx.shutdown().await?;
//! assert_eq!(rx.recv().await?, None); // clean close
//! # server.await.map_err(std::io::Error::other)??;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod config;
mod connection;
mod deframer;
mod error;
mod pool;
mod receiver;
mod send_buf;
mod sender;

pub use config::TcpConfig;
pub use connection::{TcpConnection, TcpListener};
pub use deframer::{Deframer, LENGTH_PREFIX_LEN};
pub use error::TcpError;
pub use pool::{BufPool, MAX_POOLED_CAPACITY, POOLED_BUFFERS};
pub use receiver::TcpReceiver;
pub use send_buf::SendBuf;
pub use sender::TcpSender;
