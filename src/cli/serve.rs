//! `rdma-rpc serve`: the echo service (and with `--target`, replication into that endpoint) until
//! Ctrl-C or SIGTERM, then a graceful drain. With an
//! `rdma://` URL, clients that offer RDMA get an RDMA data path; others are served over TCP.
//!
//! Once bound it prints exactly one line on stdout, `listening on SCHEME://ADDR ... (services: ...)`,
//! with the real address (port 0 picks a free one), so scripts and tests can wait for it.

use std::io::Write;
use std::time::Duration;

use crate::echo::EchoService;
use crate::rpc::{ConnectionConfig, Router, Server};
use crate::transport::rdma::RdmaConfig;
use crate::transport::tcp::TcpListener;

use super::args::ServeArgs;
use super::error::CliError;

/// Runs `serve` to completion.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let endpoint = &args.listen;
    let rdma = if endpoint.wants_rdma() { rdma_config(endpoint, args.no_fallback, args.poll)? } else { None };
    let listener = TcpListener::bind((endpoint.host.as_str(), endpoint.port), super::tcp_config(args.poll))
        .await
        .map_err(|source| CliError::listen(endpoint.to_string(), source))?;
    let local = listener.local_addr().map_err(|source| CliError::listen(endpoint.to_string(), source))?;

    let mut router = Router::default();
    router.add(EchoService::server());
    if let Some(target) = &args.target {
        let endpoint = crate::replication::endpoint::Endpoint::parse(target)?;
        router.add(crate::replication::service::ReplicationService::new(endpoint).server());
    }
    let services = router.describe();
    let mut server = Server::new(router, ConnectionConfig::default());
    if args.run_to_completion {
        server = server.run_to_completion();
    }

    {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head -0`) must not stop the server: it is only a notice.
        let offer = match &rdma {
            Some(_) if args.run_to_completion => {
                " (RDMA offered, each RDMA connection run to completion in its own thread; TCP for clients that cannot)"
            }
            Some(_) => " (RDMA offered; TCP for clients that cannot)",
            None if endpoint.wants_rdma() => " (RDMA not possible here: TCP only)",
            None => "",
        };
        let _ = writeln!(stdout, "listening on {}://{local}{offer} (services: {services})", endpoint.scheme_name());
        let _ = stdout.flush();
    }
    tracing::info!(%local, %services, rdma = rdma.is_some(), "serving");

    let drain = Duration::from_secs(args.drain_secs);
    let shutdown = async move {
        let signal = shutdown_signal().await;
        eprintln!("{signal}: no new connections; draining in-flight calls for up to {}s", drain.as_secs());
    };
    server.serve(listener, rdma, shutdown, drain).await.map_err(CliError::Serve)?;
    tracing::info!("server stopped");
    Ok(())
}

/// The RDMA settings to offer, after checking that this host has an RDMA device at all.
fn rdma_config(
    endpoint: &super::Endpoint,
    no_fallback: bool,
    poll: super::PollFlags,
) -> Result<Option<RdmaConfig>, CliError> {
    let reason = match crate::transport::rdma::verbs::list_devices() {
        Ok(devices) if !devices.is_empty() => return Ok(Some(super::rdma_config(poll))),
        Ok(_) => "no RDMA device is registered on this host".to_string(),
        Err(err) => err.to_string(),
    };
    if no_fallback {
        return Err(CliError::RdmaUnavailable { host_port: endpoint.host_port(), reason });
    }
    tracing::warn!(%reason, "RDMA not possible on this host; serving TCP only (pass --no-fallback to make this an error)");
    Ok(None)
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
