//! The main thread's tick: a module thread that posts an event to each
//! ticking configuration's Envoy scheduler every period.
//!
//! Envoy's dynamic-module ABI has no timer; its configuration scheduler
//! runs an event on the main thread when any thread commits one. So one
//! thread, started on first use, wakes every [`GRANULARITY_MS`] and
//! commits an event for each configuration whose period has passed. The
//! list is behind one lock that [`remove`] takes too, so a scheduler is
//! never committed to after it was deleted.

use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use crate::abi::Scheduler;
use crate::host::monotonic_ns;

/// How often the ticker thread wakes.
const GRANULARITY_MS: u64 = 10;

struct Ticking {
    id: u64,
    scheduler: Scheduler,
    period_ms: u32,
    due_ns: u64,
}

static TICKING: Mutex<Vec<Ticking>> = Mutex::new(Vec::new());
static START: Once = Once::new();

/// Ticks configuration `id` through `scheduler` every `period_ms` (0:
/// paused), replacing any earlier registration's period.
pub fn register(id: u64, scheduler: Scheduler, period_ms: u32) {
    START.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("apikey-ticker".to_owned())
            .spawn(run);
        if spawned.is_err() {
            crate::abi::log(
                crate::abi::Level::Critical,
                "apikey: cannot start the ticker thread; configurations will not tick",
            );
        }
    });
    let mut ticking = TICKING.lock().unwrap_or_else(PoisonError::into_inner);
    ticking.push(Ticking {
        id,
        scheduler,
        period_ms,
        due_ns: monotonic_ns().saturating_add(u64::from(period_ms) * 1_000_000),
    });
}

/// Whether configuration `id` has a scheduler registered.
pub fn is_registered(id: u64) -> bool {
    TICKING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|entry| entry.id == id)
}

/// Changes configuration `id`'s period (0 pauses it).
pub fn set_period(id: u64, period_ms: u32) {
    let mut ticking = TICKING.lock().unwrap_or_else(PoisonError::into_inner);
    for entry in ticking.iter_mut().filter(|entry| entry.id == id) {
        if entry.period_ms != period_ms {
            entry.period_ms = period_ms;
            entry.due_ns = monotonic_ns().saturating_add(u64::from(period_ms) * 1_000_000);
        }
    }
}

/// Stops ticking configuration `id` and deletes its scheduler (main thread).
pub fn remove(id: u64) {
    let mut ticking = TICKING.lock().unwrap_or_else(PoisonError::into_inner);
    let mut kept = Vec::with_capacity(ticking.len());
    for entry in ticking.drain(..) {
        if entry.id == id {
            entry.scheduler.delete();
        } else {
            kept.push(entry);
        }
    }
    *ticking = kept;
}

fn run() {
    loop {
        std::thread::sleep(Duration::from_millis(GRANULARITY_MS));
        let now = monotonic_ns();
        let mut ticking = TICKING.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in ticking.iter_mut() {
            if entry.period_ms > 0 && now >= entry.due_ns {
                entry.scheduler.commit(0);
                entry.due_ns = now.saturating_add(u64::from(entry.period_ms) * 1_000_000);
            }
        }
    }
}
