//! [`CliError`]: everything `rdma-rpc` can fail with. Each message says what went wrong and names
//! the fix (the flag to change, the command to run), because it is the last thing an operator reads.

use std::io;
use std::process::ExitCode;

use crate::rpc::ConnectError;
use crate::status::{Code, Status};
use crate::transport::TransportError;

/// The accepted endpoint forms, shown with every URL error.
pub(crate) const URL_FORMS: &str = "expected tcp://HOST:PORT or rdma://HOST:PORT, where HOST is a name, an IPv4 \
     address or a bracketed IPv6 address, e.g. tcp://127.0.0.1:7878, tcp://[::1]:7878, rdma://node2.example:7878";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// An endpoint URL that does not parse.
    #[error("invalid endpoint `{url}`: {reason}; {URL_FORMS}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `rdma://` endpoint with `--no-fallback`, where RDMA is not possible.
    #[error(
        "RDMA not possible to {host_port}: {reason}; fix that, use tcp://{host_port}, or drop --no-fallback to fall \
         back to TCP automatically"
    )]
    RdmaUnavailable {
        /// "HOST:PORT" of the endpoint, IPv6 hosts in brackets.
        host_port: String,
        /// Why not.
        reason: String,
    },
    /// Replication failed; the message says whether retrying can help.
    #[error("replication failed ({kind}): {0}", kind = .0.kind_word())]
    Replication(#[from] crate::replication::error::ReplicationError),
    /// The demo found something wrong (a lost or corrupted chunk, a failed call).
    #[error("demo failed: {0}")]
    Demo(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}; check the process limits (threads, open files)")]
    Runtime(#[source] io::Error),
    /// `serve` could not bind its listening socket.
    #[error("cannot listen on {endpoint}: {source}; {hint}")]
    Listen {
        /// The endpoint.
        endpoint: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The server stopped with an error.
    #[error("the server stopped: {0}")]
    Serve(#[source] io::Error),
    /// `ping` could not connect.
    #[error("cannot connect to {endpoint}: {detail}; {hint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
        /// What to do about it.
        hint: String,
    },
    /// `ping` got no connection within its timeout.
    #[error(
        "no connection to {endpoint} within {timeout_ms} ms; is the host reachable and `rdma-rpc serve --listen \
         {endpoint}` running there? (raise --timeout-ms for slow links)"
    )]
    ConnectTimeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// An echo call failed.
    #[error("echo call #{index} to {peer} failed: {status}{hint}")]
    Call {
        /// Which call (0-based).
        index: u64,
        /// The server.
        peer: String,
        /// How it ended.
        status: Status,
        /// What to do about it, with a leading "; ", or empty.
        hint: &'static str,
    },
    /// An echo reply that is not the payload that was sent.
    #[error(
        "echo call #{index}: the reply differs from the payload (sent {sent} B, got {got} B, first difference at \
         byte {at}); the server or something on the path corrupts data"
    )]
    Mismatch {
        /// Which call (0-based).
        index: u64,
        /// Bytes sent.
        sent: usize,
        /// Bytes received.
        got: usize,
        /// Offset of the first differing byte.
        at: usize,
    },
}

impl CliError {
    /// The process exit code: 2 for a command line that cannot work, 1 for a failure at run time.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::BadUrl { .. } | CliError::RdmaUnavailable { .. } => ExitCode::from(2),
            CliError::Replication(err) if err.is_retryable() => ExitCode::from(75), // EX_TEMPFAIL
            _ => ExitCode::FAILURE,
        }
    }

    /// A listen failure, with the fix that matches the operating system's reason.
    pub(crate) fn listen(endpoint: String, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => {
                "another process already uses this port: stop it, or pick another port with --listen \
                 tcp://HOST:PORT (port 0 picks a free one)"
            }
            io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: pick a port of 1024 or more, e.g. --listen tcp://0.0.0.0:7878"
            }
            io::ErrorKind::AddrNotAvailable => {
                "the host is not an address of this machine: listen on one of its addresses, or on 0.0.0.0 / [::] \
                 for all of them"
            }
            _ => "check the host and port of --listen, e.g. --listen tcp://0.0.0.0:7878",
        };
        CliError::Listen { endpoint, source, hint }
    }

    /// A connect failure of `ping`, with the fix that matches it.
    pub(crate) fn connect(endpoint: &str, err: ConnectError) -> Self {
        use rdma_rpc_transport_tcp::TcpError;
        let running = format!("is `rdma-rpc serve --listen {endpoint}` running there?");
        let (detail, hint) = match err {
            ConnectError::Transport(TransportError::Tcp(TcpError::Connect { source, .. })) => {
                (source.to_string(), format!("{running} (check the host, the port and any firewall in between)"))
            }
            ConnectError::Transport(TransportError::Tcp(TcpError::Io(source))) => (
                source.to_string(),
                "check that the host name resolves (`getent hosts HOST`) or give an IP address".to_string(),
            ),
            ConnectError::Handshake { status, .. } => (
                format!("the rdma-rpc handshake failed: {status}"),
                format!(
                    "the peer does not speak rdma-rpc: is `rdma-rpc serve --listen {endpoint}` running there, or does \
                     another program use that port?"
                ),
            ),
            other => (other.to_string(), running),
        };
        CliError::Connect { endpoint: endpoint.to_string(), detail, hint }
    }

    /// A failed echo call, with a hint for the codes an operator can act on.
    pub(crate) fn call(index: u64, peer: &str, status: Status) -> Self {
        let hint = match status.code {
            Code::DeadlineExceeded => "; the server answered too slowly: raise --timeout-ms or lower --concurrency",
            Code::ResourceExhausted => "; the server refused the load: lower --size or --concurrency",
            Code::Unavailable => "; the connection broke: check that the server is still running",
            Code::Unimplemented => "; the server does not offer rdmarpc.echo.Echo: is it an `rdma-rpc serve` server?",
            _ => "",
        };
        CliError::Call { index, peer: peer.to_string(), status, hint }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_fix() {
        let text = CliError::RdmaUnavailable { host_port: "h:1".into(), reason: "no device".into() }.to_string();
        assert!(text.contains("RDMA not possible to h:1: no device") && text.contains("tcp://h:1"), "{text}");

        let err = CliError::listen("tcp://0.0.0.0:1".into(), io::Error::from(io::ErrorKind::AddrInUse));
        assert!(err.to_string().contains("port 0 picks a free one"), "{err}");

        let err = CliError::call(3, "tcp://h:1", Status::deadline_exceeded("late"));
        assert!(err.to_string().contains("raise --timeout-ms"), "{err}");
        assert_eq!(err.exit_code(), ExitCode::FAILURE);
    }

    #[test]
    fn connection_refused_names_the_server_command() {
        let source = io::Error::from(io::ErrorKind::ConnectionRefused);
        let tcp = rdma_rpc_transport_tcp::TcpError::Connect { addr: "127.0.0.1:1".into(), source };
        let err = CliError::connect("tcp://127.0.0.1:1", ConnectError::Transport(TransportError::Tcp(tcp)));
        let text = err.to_string();
        assert!(text.contains("`rdma-rpc serve --listen tcp://127.0.0.1:1` running there?"), "{text}");
    }
}
