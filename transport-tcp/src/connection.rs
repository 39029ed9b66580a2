//! Establishing connections: [`TcpListener`] (server side) and
//! [`TcpConnection`] (either side, before it is split into halves).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpStream, ToSocketAddrs};

use crate::config::TcpConfig;
use crate::error::TcpError;
use crate::receiver::TcpReceiver;
use crate::sender::TcpSender;

/// Accepts incoming connections, each configured with the listener's
/// [`TcpConfig`].
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    config: TcpConfig,
}

impl TcpListener {
    /// Binds to `addr` (port 0 picks a free port, see
    /// [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: impl ToSocketAddrs, config: TcpConfig) -> io::Result<Self> {
        let inner = tokio::net::TcpListener::bind(addr).await?;
        tracing::debug!(addr = ?inner.local_addr().ok(), "TCP transport listening");
        Ok(Self { inner, config })
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The configuration given to accepted connections.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Waits for the next connection and applies the configuration to it
    /// (`TCP_NODELAY`).
    pub async fn accept(&self) -> io::Result<TcpConnection> {
        let (stream, peer) = self.inner.accept().await?;
        tracing::debug!(%peer, "TCP connection accepted");
        TcpConnection::from_stream(stream, self.config.clone())
    }
}

/// An established TCP connection carrying length-prefixed messages.
///
/// [`split`](Self::split) it into a [`TcpSender`] and a [`TcpReceiver`],
/// which can be used from different tasks.
#[derive(Debug)]
pub struct TcpConnection {
    stream: TcpStream,
    config: TcpConfig,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
}

impl TcpConnection {
    /// Connects to `addr`, trying each address it resolves to in turn.
    ///
    /// A failure to connect is reported as [`TcpError::Connect`], whose
    /// message says how to start a server; a failure to resolve the name, or
    /// to configure the new socket, as [`TcpError::Io`].
    pub async fn connect(addr: impl ToSocketAddrs, config: TcpConfig) -> Result<Self, TcpError> {
        let mut last_failure = None;
        for candidate in tokio::net::lookup_host(addr).await? {
            match TcpStream::connect(candidate).await {
                Ok(stream) => {
                    tracing::debug!(peer = %candidate, "TCP connection established");
                    return Ok(Self::from_stream(stream, config)?);
                }
                Err(source) => {
                    tracing::debug!(peer = %candidate, error = %source, "TCP connect failed");
                    last_failure = Some((candidate, source));
                }
            }
        }
        Err(match last_failure {
            Some((candidate, source)) => TcpError::Connect { addr: candidate.to_string(), source },
            None => TcpError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address to connect to resolved to no socket address",
            )),
        })
    }

    /// Wraps an already connected stream, applying `config` to it
    /// (`TCP_NODELAY`). Fails if the socket option cannot be set or the
    /// stream is no longer connected.
    pub fn from_stream(stream: TcpStream, config: TcpConfig) -> io::Result<Self> {
        stream.set_nodelay(config.nodelay)?;
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        Ok(Self { stream, config, peer_addr, local_addr })
    }

    /// The address of the remote peer.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The local address of this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration of this connection.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Whether `TCP_NODELAY` is set on the socket.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.stream.nodelay()
    }

    /// Splits the connection into independently usable halves (no locking
    /// between them).
    pub fn split(self) -> (TcpSender, TcpReceiver) {
        let (reader, writer) = self.stream.into_split();
        (TcpSender::new(writer, self.config.clone()), TcpReceiver::new(reader, self.config))
    }
}
