//! The core's [`Metric`]s as proxy-wasm metrics (`/stats`,
//! `/stats/prometheus`): one id per metric per VM, defined on first use.
//!
//! Every VM (each worker, and the main thread's) defines the same names
//! ([`Metric::name`]); Envoy backs a name with one stat, so increments from
//! all workers add up.

use std::cell::OnceCell;

use apikey_core::host::LogLevel;
use apikey_core::metrics::{Metric, MetricKind};

use crate::host;

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

const COUNTER: u32 = 0;
const GAUGE: u32 = 1;

/// This VM's metric ids, by [`Metric::index`]; `None` where the host
/// refused the definition.
type Ids = [Option<u32>; Metric::COUNT];

thread_local! {
    static IDS: OnceCell<Ids> = const { OnceCell::new() };
}

fn define(metric: Metric) -> Option<u32> {
    let kind = match metric.kind() {
        MetricKind::Counter => COUNTER,
        MetricKind::Gauge => GAUGE,
    };
    let name = metric.name();
    let mut id = 0;
    // SAFETY: the name is a live string; the out-pointer is valid.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    if status != 0 {
        host::log(
            LogLevel::Warn,
            &format!("cannot define metric {name} (status {status})"),
        );
        return None;
    }
    Some(id)
}

fn define_ids() -> Ids {
    let mut ids = [None; Metric::COUNT];
    for metric in Metric::all() {
        if let Some(slot) = metric.index().and_then(|index| ids.get_mut(index)) {
            *slot = define(metric);
        }
    }
    ids
}

/// The id of `metric` in this VM, defining them all on first use.
fn id(metric: Metric) -> Option<u32> {
    IDS.with(|ids| {
        let ids = ids.get_or_init(define_ids);
        metric
            .index()
            .and_then(|index| ids.get(index).copied().flatten())
    })
}

/// Defines every metric now, so they show (at zero) before any traffic.
pub fn define_all() {
    let _ = id(Metric::Allowed);
}

/// Adds `by` to counter `metric`.
pub fn increment(metric: Metric, by: u64) {
    if let Some(id) = id(metric) {
        // SAFETY: plain value call. A lost increment is not worth failing a request.
        let _ = unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }
}

/// Sets gauge `metric` to `value`.
pub fn record(metric: Metric, value: u64) {
    if let Some(id) = id(metric) {
        // SAFETY: plain value call.
        let _ = unsafe { proxy_record_metric(id, value) };
    }
}
