//! The filter's counters and gauges, by identity and by name.
//!
//! The core counts through [`crate::host::Host::increment`] with a
//! [`Metric`]; the edge turns each into a proxy-wasm metric id once per VM,
//! under the name [`Metric::name`] gives. The names are part of the
//! product's outside (`/stats`, `/stats/prometheus`, the dashboards in
//! `envoy/observability/` and the end-to-end tests query them), so they are
//! spelled here once and a test pins every one.
//!
//! Every VM (each worker, and the main thread's) defines the same names;
//! Envoy backs a name with one stat, so increments from all workers add up.
//! Configuration outcomes are counted once per process, not once per VM:
//! an accepted configuration by the VM that publishes its table, a refused
//! one by the first VM to refuse that exact configuration
//! ([`crate::config_lifecycle`]).

use std::borrow::Cow;

use crate::denial::ErrorCode;

/// What happened when asking the fleet's rate-limit service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// A call was made.
    Call,
    /// The service answered OVER_LIMIT.
    OverLimit,
    /// The call failed (error status, bad answer, unknown cluster).
    Failure,
    /// The call timed out.
    Timeout,
    /// Five failures in a row opened the circuit.
    CircuitOpened,
    /// A request was not asked because the circuit was open.
    SkippedOpenCircuit,
}

impl FleetEvent {
    /// Every event, in metric order.
    pub const ALL: [Self; 6] = [
        Self::Call,
        Self::OverLimit,
        Self::Failure,
        Self::Timeout,
        Self::CircuitOpened,
        Self::SkippedOpenCircuit,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Call => "apikey.fleet.calls",
            Self::OverLimit => "apikey.fleet.over_limit",
            Self::Failure => "apikey.fleet.failures",
            Self::Timeout => "apikey.fleet.timeouts",
            Self::CircuitOpened => "apikey.fleet.circuit_opened",
            Self::SkippedOpenCircuit => "apikey.fleet.skipped_open_circuit",
        }
    }
}

/// Whether a metric adds up or holds a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever incremented.
    Counter,
    /// Set to the current value.
    Gauge,
}

/// One of the filter's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// A request forwarded upstream.
    Allowed,
    /// A request denied with this code (its local reply sent).
    Denied(ErrorCode),
    /// CAS conflicts retried while taking a token.
    CasConflicts,
    /// Requests denied because conflicts outlasted the retries.
    ContentionDenials,
    /// A configuration published as a new table (counted by the publisher).
    ConfigAccepted,
    /// A configuration refused (counted by the first VM to refuse it).
    ConfigRefused,
    /// The number of keys in the table being served (a gauge).
    KeysLoaded,
    /// Something that happened asking the fleet's rate-limit service.
    Fleet(FleetEvent),
    /// A feed request to the key service that failed or was refused
    /// (`key_source`, contract §8.3).
    KeySourceFailures,
    /// A complete, verified table taken from the key service.
    KeySourceTables,
    /// A usage report the key service stored (contract §8.4).
    UsageReports,
    /// A usage report not delivered (retried with the next, or dropped
    /// when the service refused it as malformed).
    UsageFailures,
    /// Requests whose use was not reported: past the per-window bound of
    /// keys, or in a report the service refused.
    UsageDropped,
}

/// The metrics that are neither per code nor per fleet event, in index
/// order.
const SINGLE: [Metric; 11] = [
    Metric::Allowed,
    Metric::CasConflicts,
    Metric::ContentionDenials,
    Metric::ConfigAccepted,
    Metric::ConfigRefused,
    Metric::KeysLoaded,
    Metric::KeySourceFailures,
    Metric::KeySourceTables,
    Metric::UsageReports,
    Metric::UsageFailures,
    Metric::UsageDropped,
];

impl Metric {
    /// How many metrics there are: the edge keeps one id per index.
    pub const COUNT: usize = SINGLE.len() + ErrorCode::ALL.len() + FleetEvent::ALL.len();

    /// Every metric, in [`Metric::index`] order.
    pub fn all() -> impl Iterator<Item = Self> {
        SINGLE
            .into_iter()
            .chain(ErrorCode::ALL.map(Self::Denied))
            .chain(FleetEvent::ALL.map(Self::Fleet))
    }

    /// A dense index below [`Metric::COUNT`], for the edge's id table.
    /// `None` cannot happen for a code or event listed in its `ALL`.
    pub fn index(self) -> Option<usize> {
        match self {
            Self::Allowed => Some(0),
            Self::CasConflicts => Some(1),
            Self::ContentionDenials => Some(2),
            Self::ConfigAccepted => Some(3),
            Self::ConfigRefused => Some(4),
            Self::KeysLoaded => Some(5),
            Self::KeySourceFailures => Some(6),
            Self::KeySourceTables => Some(7),
            Self::UsageReports => Some(8),
            Self::UsageFailures => Some(9),
            Self::UsageDropped => Some(10),
            Self::Denied(code) => ErrorCode::ALL
                .iter()
                .position(|c| *c == code)
                .map(|i| SINGLE.len() + i),
            Self::Fleet(event) => FleetEvent::ALL
                .iter()
                .position(|e| *e == event)
                .map(|i| SINGLE.len() + ErrorCode::ALL.len() + i),
        }
    }

    /// Counter or gauge.
    pub fn kind(self) -> MetricKind {
        match self {
            Self::KeysLoaded => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }

    /// The stat's name in Envoy.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Allowed => "apikey.requests.allowed",
            Self::Denied(code) => {
                return Cow::Owned(format!("apikey.requests.denied.{}", code.as_str()))
            }
            Self::CasConflicts => "apikey.rate_limit.cas_conflicts",
            Self::ContentionDenials => "apikey.rate_limit.contention_denials",
            Self::ConfigAccepted => "apikey.config.accepted",
            Self::ConfigRefused => "apikey.config.refused",
            Self::KeysLoaded => "apikey.keys_loaded",
            Self::KeySourceFailures => "apikey.key_source.failures",
            Self::KeySourceTables => "apikey.key_source.tables",
            Self::UsageReports => "apikey.usage.reports",
            Self::UsageFailures => "apikey.usage.failures",
            Self::UsageDropped => "apikey.usage.dropped",
            Self::Fleet(event) => event.name(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_metric_keeps_the_name_dashboards_and_tests_query() {
        let names: Vec<String> = Metric::all().map(|m| m.name().into_owned()).collect();
        let expected = [
            "apikey.requests.allowed",
            "apikey.rate_limit.cas_conflicts",
            "apikey.rate_limit.contention_denials",
            "apikey.config.accepted",
            "apikey.config.refused",
            "apikey.keys_loaded",
            "apikey.key_source.failures",
            "apikey.key_source.tables",
            "apikey.usage.reports",
            "apikey.usage.failures",
            "apikey.usage.dropped",
            "apikey.requests.denied.invalid_path",
            "apikey.requests.denied.missing_credentials",
            "apikey.requests.denied.malformed_credentials",
            "apikey.requests.denied.conflicting_credentials",
            "apikey.requests.denied.invalid_key",
            "apikey.requests.denied.key_revoked",
            "apikey.requests.denied.key_expired",
            "apikey.requests.denied.insufficient_scope",
            "apikey.requests.denied.plan_upgrade_required",
            "apikey.requests.denied.rate_limited",
            "apikey.requests.denied.not_configured",
            "apikey.requests.denied.rate_limiter_unavailable",
            "apikey.requests.denied.https_required",
            "apikey.requests.denied.not_found",
            "apikey.fleet.calls",
            "apikey.fleet.over_limit",
            "apikey.fleet.failures",
            "apikey.fleet.timeouts",
            "apikey.fleet.circuit_opened",
            "apikey.fleet.skipped_open_circuit",
        ];
        assert_eq!(names, expected, "a metric name changed");
    }

    #[test]
    fn indexes_are_dense_and_follow_the_listing() {
        for (position, metric) in Metric::all().enumerate() {
            assert_eq!(metric.index(), Some(position), "{metric:?}");
        }
        assert_eq!(Metric::all().count(), Metric::COUNT);
    }

    #[test]
    fn only_keys_loaded_is_a_gauge() {
        let gauges: Vec<Metric> = Metric::all()
            .filter(|m| m.kind() == MetricKind::Gauge)
            .collect();
        assert_eq!(gauges, [Metric::KeysLoaded]);
    }
}
