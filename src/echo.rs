//! The echo service every rdma-rpc server offers (`proto/echo.proto`): `rdma-rpc ping` and the
//! benchmarks measure round trips with it.

use crate::pb::echo::{Echo, EchoReply, EchoRequest, EchoServer};
use crate::rpc::{CallReceiver, RequestContext, ResponseSender};
use crate::status::Status;

/// Returns every payload unchanged. The reply shares the request's buffer: no copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

impl EchoService {
    /// The service, ready to add to a [`Router`](crate::rpc::Router).
    pub fn server() -> EchoServer<EchoService> {
        EchoServer::new(EchoService)
    }
}

impl Echo for EchoService {
    async fn echo(&self, request: EchoRequest, _ctx: RequestContext) -> Result<EchoReply, Status> {
        Ok(EchoReply { payload: request.payload })
    }

    async fn echo_stream(
        &self,
        mut requests: CallReceiver<EchoRequest>,
        mut responses: ResponseSender<EchoReply>,
        _ctx: RequestContext,
    ) -> Result<(), Status> {
        while let Some(request) = requests.message().await? {
            responses.send(&EchoReply { payload: request.payload }).await?;
        }
        Ok(())
    }

    async fn pipe(
        &self,
        mut requests: CallReceiver<EchoRequest>,
        mut responses: ResponseSender<EchoReply>,
        _ctx: RequestContext,
    ) -> Result<(), Status> {
        while let Some(chunk) = requests.data().await? {
            responses.send_data(chunk).await?;
        }
        Ok(())
    }

    async fn sink(&self, mut requests: CallReceiver<EchoRequest>, _ctx: RequestContext) -> Result<EchoReply, Status> {
        let mut received = 0u64;
        while let Some(chunk) = requests.data().await? {
            received += chunk.len() as u64;
        }
        Ok(EchoReply { payload: bytes::Bytes::copy_from_slice(&received.to_be_bytes()) })
    }
}
