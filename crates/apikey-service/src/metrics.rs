//! Prometheus metrics of the API: requests by route, method and status,
//! and their latency as a histogram by route and method.
//!
//! Labels are route templates (`/v1/keys/{id}`), never concrete paths, so
//! no key id reaches the metrics and the number of series stays bounded
//! (a path no route matches is `unmatched`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// The registry and its two families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers `apikey_service_requests_total` and
    /// `apikey_service_request_duration_seconds`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.25 ms to about 8 s, doubling.
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "apikey_service_requests",
            "Management API requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "apikey_service_request_duration_seconds",
            "Management API latency by route template and method",
            duration.clone(),
        );
        Self {
            registry,
            requests,
            duration,
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_method_and_status() {
        let metrics = Metrics::new();
        metrics.observe("/v1/keys", "POST", 201, 0.002);
        metrics.observe("/v1/keys", "POST", 201, 0.003);
        metrics.observe("/v1/keys/{id}", "GET", 404, 0.001);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(
                r#"apikey_service_requests_total{route="/v1/keys",method="POST",status="201"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"apikey_service_request_duration_seconds_count{route="/v1/keys/{id}",method="GET"} 1"#),
            "{text}"
        );
    }
}
