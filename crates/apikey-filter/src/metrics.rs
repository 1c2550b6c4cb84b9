//! Counters and gauges, through proxy-wasm metrics (`/stats`,
//! `/stats/prometheus`).
//!
//! Every VM (each worker, and the main thread's) defines the same names;
//! Envoy backs a name with one stat, so increments from all workers add up.
//! Configuration outcomes are counted once per process, not once per VM:
//! an accepted configuration by the VM that publishes its table, a refused
//! one by the first VM to refuse that exact configuration (see
//! `apikey_core::refusal`).

use std::cell::RefCell;

use apikey_core::denial::ErrorCode;
use apikey_core::key_table::Lineage;
use apikey_core::refusal;

use crate::host::{self, SharedData};

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

const COUNTER: u32 = 0;
const GAUGE: u32 = 1;

/// The filter's metric ids in this VM.
struct Ids {
    allowed: Option<u32>,
    denied: [Option<u32>; ErrorCode::ALL.len()],
    cas_conflicts: Option<u32>,
    contention_denials: Option<u32>,
    config_accepted: Option<u32>,
    config_refused: Option<u32>,
    keys_loaded: Option<u32>,
    fleet: [Option<u32>; FleetEvent::ALL.len()],
}

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
    const ALL: [Self; 6] = [
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

thread_local! {
    static IDS: RefCell<Option<Ids>> = const { RefCell::new(None) };
}

fn define(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the name is a live string; the out-pointer is valid.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    if status != 0 {
        host::log(
            host::Level::Warn,
            &format!("cannot define metric {name} (status {status})"),
        );
        return None;
    }
    Some(id)
}

fn with_ids(use_ids: impl FnOnce(&Ids)) {
    IDS.with(|cell| {
        let mut ids = cell.borrow_mut();
        let ids = ids.get_or_insert_with(|| Ids {
            allowed: define(COUNTER, "apikey.requests.allowed"),
            denied: ErrorCode::ALL.map(|code| {
                define(
                    COUNTER,
                    &format!("apikey.requests.denied.{}", code.as_str()),
                )
            }),
            cas_conflicts: define(COUNTER, "apikey.rate_limit.cas_conflicts"),
            contention_denials: define(COUNTER, "apikey.rate_limit.contention_denials"),
            config_accepted: define(COUNTER, "apikey.config.accepted"),
            config_refused: define(COUNTER, "apikey.config.refused"),
            keys_loaded: define(GAUGE, "apikey.keys_loaded"),
            fleet: FleetEvent::ALL.map(|event| define(COUNTER, event.name())),
        });
        use_ids(ids);
    });
}

fn increment(id: Option<u32>, by: u64) {
    if let Some(id) = id {
        // SAFETY: plain value call. A lost increment is not worth failing a request.
        let _ = unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }
}

/// Defines every metric now, so they show (at zero) before any traffic.
pub fn define_all() {
    with_ids(|_| {});
}

/// One allowed request.
pub fn allowed() {
    with_ids(|ids| increment(ids.allowed, 1));
}

/// One denied request.
pub fn denied(code: ErrorCode) {
    let index = ErrorCode::ALL.iter().position(|c| *c == code);
    with_ids(|ids| increment(index.and_then(|i| ids.denied.get(i).copied().flatten()), 1));
}

/// CAS conflicts retried while taking a token, and whether they ended in a
/// contention denial.
pub fn bucket_contention(conflicts: u32, denied: bool) {
    with_ids(|ids| {
        increment(ids.cas_conflicts, u64::from(conflicts));
        if denied {
            increment(ids.contention_denials, 1);
        }
    });
}

/// One fleet event.
pub fn fleet(event: FleetEvent) {
    let index = FleetEvent::ALL.iter().position(|e| *e == event);
    with_ids(|ids| increment(index.and_then(|i| ids.fleet.get(i).copied().flatten()), 1));
}

/// A configuration published as a new table (counted by the publisher).
pub fn config_accepted() {
    with_ids(|ids| increment(ids.config_accepted, 1));
}

/// A configuration of `lineage` refused. Every VM refuses the same bad
/// configuration; only the first to record its digest in shared data
/// counts it (per lineage, so two filters refusing in turn both count).
/// When shared data fails it is counted.
pub fn config_refused(lineage: &Lineage, digest: &[u8; 32]) {
    if refusal::first_to_refuse(&SharedData, lineage, digest).unwrap_or(true) {
        with_ids(|ids| increment(ids.config_refused, 1));
    }
}

/// The number of keys in the table being served.
pub fn keys_loaded(count: usize) {
    with_ids(|ids| {
        if let Some(id) = ids.keys_loaded {
            // SAFETY: plain value call.
            let _ = unsafe { proxy_record_metric(id, u64::try_from(count).unwrap_or(u64::MAX)) };
        }
    });
}
