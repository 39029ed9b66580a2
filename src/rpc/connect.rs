//! Connecting by endpoint, with RDMA when both sides can and TCP otherwise.
//!
//! `connect` opens a TCP connection and, when RDMA is wanted, offers it (see
//! `transport-rdma/src/handshake.rs`). If this host or the server cannot do RDMA, the same TCP
//! connection carries the calls — unless the options forbid the fallback, in which case the
//! caller gets [`ConnectError::RdmaRequired`] with the reason.

use std::time::Duration;

use super::{Client, ConnectError, ConnectionConfig};
use crate::transport::rdma::{self, Negotiated, RdmaConfig, RdmaConnection};
use crate::transport::tcp::{TcpConfig, TcpConnection, TcpHalves};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Offer RDMA with these settings; `None` connects over plain TCP.
    pub rdma: Option<RdmaConfig>,
    /// Whether a failed RDMA offer may fall back to TCP (true by default).
    pub fallback: bool,
    /// TCP settings (also for the control connection of RDMA).
    pub tcp: TcpConfig,
    /// Session settings.
    pub connection: ConnectionConfig,
    /// Time allowed for TCP connect, RDMA setup and the handshake together.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            rdma: None,
            fallback: true,
            tcp: TcpConfig::default(),
            connection: ConnectionConfig::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A connected client, over whichever transport was negotiated.
#[derive(Debug, Clone)]
pub enum Connection {
    /// Over TCP; `fallback` says why not RDMA when RDMA was asked for.
    Tcp {
        /// The client.
        client: Client<TcpHalves>,
        /// Why RDMA was not used, if it was offered.
        fallback: Option<String>,
    },
    /// Over RDMA.
    Rdma(Client<RdmaConnection>),
}

impl Connection {
    /// "tcp" or "rdma".
    pub fn transport_name(&self) -> &'static str {
        match self {
            Connection::Tcp { .. } => "tcp",
            Connection::Rdma(_) => "rdma",
        }
    }
}

/// Connects to `host:port`.
pub async fn connect(addr: &str, options: &ConnectOptions) -> Result<Connection, ConnectError> {
    let attempt = async {
        match establish(addr, options).await? {
            Established::Tcp { halves, fallback } => {
                let client = Client::connect(*halves, options.connection.clone()).await?;
                Ok(Connection::Tcp { client, fallback })
            }
            Established::Rdma(connection) => {
                Ok(Connection::Rdma(Client::connect(connection, options.connection.clone()).await?))
            }
        }
    };
    within(addr, options, attempt).await
}

/// A transport connected as [`connect`] would, before any session runs on it.
pub(crate) enum Established {
    /// Over TCP; `fallback` says why not RDMA when RDMA was asked for. (Boxed: the TCP halves
    /// are over twice an RDMA connection's size, and this moves once per connection.)
    Tcp { halves: Box<TcpHalves>, fallback: Option<String> },
    /// Over RDMA.
    Rdma(RdmaConnection),
}

/// The TCP connection to `addr`, with RDMA negotiated on it when the options offer it. No
/// time limit: callers bound it and their handshake together ([`within`]).
pub(crate) async fn establish(addr: &str, options: &ConnectOptions) -> Result<Established, ConnectError> {
    let tcp =
        TcpConnection::connect(addr, options.tcp.clone()).await.map_err(crate::transport::TransportError::from)?;
    let peer = format!("tcp://{}", tcp.peer_addr());
    let Some(rdma_config) = &options.rdma else {
        let (sender, receiver) = tcp.split();
        let halves = Box::new(TcpHalves { sender, receiver, first: None, peer });
        return Ok(Established::Tcp { halves, fallback: None });
    };
    match rdma::connect(tcp, rdma_config).await.map_err(crate::transport::TransportError::from)? {
        Negotiated::Rdma(connection) => Ok(Established::Rdma(connection)),
        Negotiated::Tcp { reason, .. } if !options.fallback => Err(ConnectError::RdmaRequired { reason }),
        Negotiated::Tcp { sender, receiver, reason } => {
            tracing::warn!(%addr, %reason, "RDMA not possible; using TCP");
            let halves = Box::new(TcpHalves { sender, receiver, first: None, peer });
            Ok(Established::Tcp { halves, fallback: Some(reason) })
        }
    }
}

/// `attempt` within the options' connect timeout.
pub(crate) async fn within<T>(
    addr: &str,
    options: &ConnectOptions,
    attempt: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(options.timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout { addr: addr.to_string(), timeout: options.timeout })?
}
