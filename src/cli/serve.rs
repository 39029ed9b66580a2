//! `rdma-rpc serve`: the echo service over TCP until Ctrl-C or SIGTERM, then a graceful drain.
//!
//! Once bound it prints exactly one line on stdout, `listening on tcp://ADDR (services: ...)`,
//! with the real address (port 0 picks a free one), so scripts and tests can wait for it.

use std::io::Write;
use std::time::Duration;

use crate::echo::EchoService;
use crate::rpc::{ConnectionConfig, Router, Server};
use crate::transport::tcp::{TcpConfig, TcpListener};

use super::args::ServeArgs;
use super::error::CliError;

/// Runs `serve` to completion.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let resolved = args.listen.transport(args.no_fallback)?;
    let endpoint = resolved.endpoint;
    let listener = TcpListener::bind((endpoint.host.as_str(), endpoint.port), TcpConfig::default())
        .await
        .map_err(|source| CliError::listen(endpoint.to_string(), source))?;
    let local = listener.local_addr().map_err(|source| CliError::listen(endpoint.to_string(), source))?;

    let mut router = Router::default();
    router.add(EchoService::server());
    let services = router.describe();
    let server = Server::new(router, ConnectionConfig::default());

    {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head -0`) must not stop the server: it is only a notice.
        let _ = writeln!(stdout, "listening on tcp://{local} (services: {services})");
        let _ = stdout.flush();
    }
    tracing::info!(%local, %services, fallback = resolved.fallback, "serving");

    let drain = Duration::from_secs(args.drain_secs);
    let shutdown = async move {
        let signal = shutdown_signal().await;
        eprintln!("{signal}: no new connections; draining in-flight calls for up to {}s", drain.as_secs());
    };
    server.serve_tcp(listener, shutdown, drain).await.map_err(CliError::Serve)?;
    tracing::info!("server stopped");
    Ok(())
}

/// Resolves with the signal's name on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "interrupted",
            Err(err) => {
                tracing::warn!(%err, "cannot listen for Ctrl-C; stop the server with SIGTERM or SIGKILL");
                std::future::pending().await
            }
        }
    };
    tokio::select! {
        name = ctrl_c => name,
        name = terminate() => name,
    }
}

#[cfg(unix)]
async fn terminate() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
            "terminated"
        }
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; stop the server with Ctrl-C");
            std::future::pending().await
        }
    }
}

#[cfg(not(unix))]
async fn terminate() -> &'static str {
    std::future::pending().await
}
