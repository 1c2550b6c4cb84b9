//! The gRPC face: `envoy.service.ratelimit.v3.RateLimitService` served by
//! tonic, written out by hand in the shape `tonic-build` generates (one
//! unary method), so the build needs no `protoc`.

use std::convert::Infallible;
use std::sync::Arc;

use tonic::body::Body as GrpcBody;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::limiter::Limiter;
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::store::Counters;

/// The gRPC service name.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The one method's HTTP/2 path.
pub const SHOULD_RATE_LIMIT_PATH: &str =
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The service, as a tower `Service` tonic's server can run.
pub struct RateLimitService<C> {
    limiter: Arc<Limiter<C>>,
}

impl<C> RateLimitService<C> {
    /// Serves `limiter`.
    pub fn new(limiter: Arc<Limiter<C>>) -> Self {
        Self { limiter }
    }
}

impl<C> Clone for RateLimitService<C> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
        }
    }
}

impl<C> NamedService for RateLimitService<C> {
    const NAME: &'static str = SERVICE;
}

/// `ShouldRateLimit` as tonic's unary-method interface.
struct ShouldRateLimit<C>(Arc<Limiter<C>>);

impl<C: Counters> UnaryService<RateLimitRequest> for ShouldRateLimit<C> {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let limiter = self.0.clone();
        Box::pin(async move {
            limiter
                .should_rate_limit(request.get_ref())
                .await
                .map(Response::new)
        })
    }
}

impl<C, B> Service<http::Request<B>> for RateLimitService<C>
where
    C: Counters,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<GrpcBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == SHOULD_RATE_LIMIT_PATH {
            let method = ShouldRateLimit(self.limiter.clone());
            return Box::pin(async move {
                let mut grpc =
                    Grpc::new(ProstCodec::<RateLimitResponse, RateLimitRequest>::default());
                Ok(grpc.unary(method, request).await)
            });
        }
        Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) })
    }
}
