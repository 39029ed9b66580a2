//! The protobuf messages and service stubs generated from `proto/` by `build.rs` (prost, with a
//! service generator of ours that emits a typed client and a server trait per service).

/// The call envelope: call header, status, settings, goaway.
#[allow(missing_docs, clippy::all)]
pub mod rpc {
    include!(concat!(env!("OUT_DIR"), "/rdmarpc.rpc.rs"));
}

/// The echo service behind `rdma-rpc ping` and the benchmarks.
#[allow(missing_docs, clippy::all)]
pub mod echo {
    include!(concat!(env!("OUT_DIR"), "/rdmarpc.echo.rs"));
}

/// The replication service (zrepl's pdu.proto plus streaming Send and Receive).
#[allow(missing_docs, clippy::all)]
pub mod replication {
    include!(concat!(env!("OUT_DIR"), "/rdmarpc.replication.rs"));
}
