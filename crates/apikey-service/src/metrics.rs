//! Prometheus metrics of the API: requests by route, method and status,
//! and their latency as a histogram by route and method; and the usage
//! reports gateways delivered (§8.4), with their lines by outcome.
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    usage_reports: Counter,
    usage_lines: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers `apikey_service_requests_total`,
    /// `apikey_service_request_duration_seconds`,
    /// `apikey_service_usage_reports_total` and
    /// `apikey_service_usage_lines_total{outcome="accepted|unknown"}`.
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
        let usage_reports = Counter::default();
        registry.register(
            "apikey_service_usage_reports",
            "Usage reports stored (POST /v1/feed/usage answered 200)",
            usage_reports.clone(),
        );
        let usage_lines = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "apikey_service_usage_lines",
            "Lines of stored usage reports: accepted, or naming a key the database lacks (unknown)",
            usage_lines.clone(),
        );
        // Both outcomes show (at zero) before the first report.
        for outcome in ["accepted", "unknown"] {
            let _ = usage_lines.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry,
            requests,
            duration,
            usage_reports,
            usage_lines,
        }
    }

    /// Counts one stored usage report and its lines.
    pub fn usage_report(&self, accepted: u64, unknown: u64) {
        self.usage_reports.inc();
        for (outcome, lines) in [("accepted", accepted), ("unknown", unknown)] {
            self.usage_lines
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(lines);
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

    #[test]
    fn usage_reports_and_their_lines_are_counted_by_outcome() {
        let metrics = Metrics::new();
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"apikey_service_usage_lines_total{outcome="unknown"} 0"#),
            "the unknown outcome is absent before any report: {text}"
        );
        metrics.usage_report(3, 1);
        metrics.usage_report(2, 0);
        let text = metrics.render().unwrap();
        for line in [
            "apikey_service_usage_reports_total 2",
            r#"apikey_service_usage_lines_total{outcome="accepted"} 5"#,
            r#"apikey_service_usage_lines_total{outcome="unknown"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing: {text}");
        }
    }
}
