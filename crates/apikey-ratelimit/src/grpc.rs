//! The gRPC face: the `RateLimitService` trait that `envoy-types`
//! generated, implemented by handing each call to the [`Limiter`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::limiter::Limiter;
use crate::proto::{RateLimitRequest, RateLimitResponse, RateLimitService, RateLimitServiceServer};
use crate::store::Counters;

/// `ShouldRateLimit`, answered by the limiter.
pub struct Service<C>(Arc<Limiter<C>>);

/// The service for tonic's server: `ShouldRateLimit` answered by
/// `limiter`, any other method `UNIMPLEMENTED`.
pub fn server<C: Counters>(limiter: Arc<Limiter<C>>) -> RateLimitServiceServer<Service<C>> {
    RateLimitServiceServer::new(Service(limiter))
}

#[tonic::async_trait]
impl<C: Counters> RateLimitService for Service<C> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0
            .should_rate_limit(request.get_ref())
            .await
            .map(Response::new)
    }
}
