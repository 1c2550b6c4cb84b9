//! Key usage reports (contract §8.4): each worker VM counts the requests
//! every key authenticated and when it was last used, and reports them to
//! the key service at most every 10 seconds.
//!
//! Two parts, one per side of the VM:
//!
//! - [`UsageLog`], the pure accumulator. Requests record into it (an
//!   in-VM map update: no host call, no shared data, no clock read; the
//!   time is the wall clock the root context's tick last set, so a use is
//!   stamped to within a tick). It holds at most [`MAX_IDS`] distinct
//!   keys per window; a request of a key beyond that is dropped and
//!   counted (`apikey.usage.dropped`), so a flood of distinct keys cannot
//!   grow a worker's memory. [`UsageLog::take_report`] turns what was
//!   recorded into the NDJSON body of `POST /v1/feed/usage` and keeps
//!   what it took until [`UsageLog::report_delivered`] forgets it or
//!   [`UsageLog::report_failed`] merges it back (counts added, the later
//!   use kept, the bound kept) to go with the next report.
//! - [`UsageReporter`], the root context's side: on its tick it refreshes
//!   the log's clock and, once [`REPORT_INTERVAL_NS`] has passed since the
//!   last report and none is in flight, sends the next one over an HTTP
//!   callout to the `key_source` cluster with the feed token. A report
//!   the service did not take (no answer, a timeout, 401, 5xx) is merged
//!   back and retried with the next one; one it refused as malformed (any
//!   other 4xx) would be refused again, so it is dropped; both are logged
//!   (never the token) and counted (`apikey.usage.failures`). Nothing of
//!   this runs on a request's path: a report never delays one.
//!
//! A window larger than one request's [`MAX_REPORT_BYTES`] goes out in
//! several requests, back to back; the next window waits its 10 s.
//!
//! Requests count through a [`UsageSink`]: the VM's own log on the Wasm
//! edge. The native edge, whose workers cannot make callouts outside a
//! stream, gives each worker a log of its own behind a lock, and the main
//! thread's reporter [`UsageLog::absorb`]s those logs into its own before
//! its tick, so one reporter per process sends every worker's uses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::host::{http_answer_status, Host, HttpCall, LogLevel};
use crate::key_source::KeySource;
use crate::metrics::Metric;
use crate::timestamp::format_rfc3339;

/// The most distinct keys one worker counts per window; a request of
/// another key is dropped and counted until the window is reported.
pub const MAX_IDS: usize = 100_000;
/// The shortest time between two reports of one worker.
pub const REPORT_INTERVAL_NS: u64 = 10 * SECOND_NS;
/// The largest report body (the service's default body limit is 1 MiB).
pub const MAX_REPORT_BYTES: usize = 512 * 1024;
/// The largest count one line carries (the service's bound; no window
/// reaches it).
pub const MAX_COUNT: u64 = 1_000_000_000_000;
/// Where reports go.
pub const REPORT_PATH: &str = "/v1/feed/usage";
/// Bound on a report request.
const REPORT_TIMEOUT_MS: u32 = 5_000;

const SECOND_NS: u64 = 1_000_000_000;
const MS_NS: u64 = 1_000_000;

/// Where a request counts the use of the key it authenticated with.
pub trait UsageSink {
    /// Counts one request of key `id`, now. Never fails a request: a log
    /// that cannot be reached loses the use.
    fn record(&self, id: &str);
}

/// A VM's own log (the Wasm edge): a use found it borrowed is lost (no
/// callback holds it across a request).
impl UsageSink for RefCell<UsageLog> {
    fn record(&self, id: &str) {
        if let Ok(mut log) = self.try_borrow_mut() {
            log.record(id);
        }
    }
}

/// One key's uses in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Uses {
    count: u64,
    /// Unix seconds of the latest.
    last_s: i64,
}

impl Uses {
    fn merge(&mut self, other: Self) {
        self.count = self.count.saturating_add(other.count).min(MAX_COUNT);
        self.last_s = self.last_s.max(other.last_s);
    }
}

/// A report taken from a [`UsageLog`]: the body to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// NDJSON, one `{"id","count","last_used_at"}` line per key.
    pub body: Vec<u8>,
    /// Keys (lines) in it.
    pub keys: usize,
    /// Requests it counts.
    pub requests: u64,
    /// Whether it holds the whole window (else keys that did not fit are
    /// left for the next report).
    pub complete: bool,
}

/// One worker's uses per key since its last report (see the module).
#[derive(Debug)]
pub struct UsageLog {
    window: HashMap<String, Uses>,
    /// What the report in flight took, until it is delivered or failed.
    taken: Vec<(String, Uses)>,
    /// Requests dropped by the bound since the last [`Self::take_dropped`].
    dropped: u64,
    /// The wall clock, in Unix seconds, as the last tick read it.
    now_s: i64,
    max_ids: usize,
}

impl UsageLog {
    /// An empty log whose clock reads `wall_ns`.
    pub fn new(wall_ns: i64) -> Self {
        Self::with_bound(wall_ns, MAX_IDS)
    }

    /// An empty log holding at most `max_ids` keys per window.
    pub fn with_bound(wall_ns: i64, max_ids: usize) -> Self {
        Self {
            window: HashMap::new(),
            taken: Vec::new(),
            dropped: 0,
            now_s: wall_ns.div_euclid(1_000_000_000),
            max_ids,
        }
    }

    /// Sets the time later uses are stamped with (the root's tick).
    pub fn set_clock(&mut self, wall_ns: i64) {
        self.now_s = wall_ns.div_euclid(1_000_000_000);
    }

    /// Counts one request of key `id`, now.
    pub fn record(&mut self, id: &str) {
        let uses = Uses {
            count: 1,
            last_s: self.now_s,
        };
        if let Some(held) = self.window.get_mut(id) {
            held.merge(uses);
        } else if self.window.len() < self.max_ids {
            self.window.insert(id.to_owned(), uses);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Keys counted and not yet taken by a report.
    pub fn pending_keys(&self) -> usize {
        self.window.len()
    }

    /// Whether a report was taken and is neither delivered nor failed.
    pub fn in_flight(&self) -> bool {
        !self.taken.is_empty()
    }

    /// Requests dropped by the bound since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The next report: as many keys as fit in [`MAX_REPORT_BYTES`],
    /// taken out of the window and kept until the report is delivered or
    /// failed. `None` when nothing is pending or a report is in flight.
    pub fn take_report(&mut self) -> Option<Report> {
        if self.in_flight() || self.window.is_empty() {
            return None;
        }
        let mut body = Vec::new();
        let mut requests = 0u64;
        let mut complete = true;
        let window = std::mem::take(&mut self.window);
        for (id, uses) in window {
            let line = report_line(&id, uses);
            if body.len() + line.len() > MAX_REPORT_BYTES && !self.taken.is_empty() {
                self.window.insert(id, uses);
                complete = false;
                continue;
            }
            body.extend_from_slice(line.as_bytes());
            requests = requests.saturating_add(uses.count);
            self.taken.push((id, uses));
        }
        Some(Report {
            body,
            keys: self.taken.len(),
            requests,
            complete,
        })
    }

    /// Takes in what `other` counted and did not hand to a report: its
    /// window (counts added, the later use kept, this log's bound kept:
    /// a key beyond it is dropped and counted) and its dropped requests.
    /// What a report of `other` has in flight is not taken: that report's
    /// answer decides it.
    pub fn absorb(&mut self, other: UsageLog) {
        self.dropped = self.dropped.saturating_add(other.dropped);
        for (id, uses) in other.window {
            if let Some(held) = self.window.get_mut(&id) {
                held.merge(uses);
            } else if self.window.len() < self.max_ids {
                self.window.insert(id, uses);
            } else {
                self.dropped = self.dropped.saturating_add(uses.count);
            }
        }
    }

    /// The report in flight was stored by the service: forgets it.
    pub fn report_delivered(&mut self) {
        self.taken.clear();
    }

    /// The report in flight was not stored: merges it back into the
    /// window (counts added, the later use kept) to go with the next one.
    /// A key that no longer fits the bound is dropped and counted.
    pub fn report_failed(&mut self) {
        for (id, uses) in std::mem::take(&mut self.taken) {
            if let Some(held) = self.window.get_mut(&id) {
                held.merge(uses);
            } else if self.window.len() < self.max_ids {
                self.window.insert(id, uses);
            } else {
                self.dropped = self.dropped.saturating_add(uses.count);
            }
        }
    }

    /// The report in flight will never be stored (the service refused it
    /// as malformed): forgets it and counts its requests as dropped.
    pub fn report_refused(&mut self) {
        let requests = self
            .taken
            .drain(..)
            .fold(0u64, |sum, (_, uses)| sum.saturating_add(uses.count));
        self.dropped = self.dropped.saturating_add(requests);
    }
}

/// One report line, with its `\n`.
fn report_line(id: &str, uses: Uses) -> String {
    let id = serde_json::Value::from(id);
    format!(
        "{{\"id\":{id},\"count\":{},\"last_used_at\":\"{}\"}}\n",
        uses.count,
        format_rfc3339(uses.last_s.saturating_mul(1_000_000_000))
    )
}

/// A report in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    token: u32,
    deadline_ns: u64,
    keys: usize,
}

/// Sends one configuration's [`UsageLog`] to the key service (see the
/// module); the root context owns it and calls it from its tick.
pub struct UsageReporter {
    log: Rc<RefCell<UsageLog>>,
    cluster: String,
    authority: String,
    /// `Bearer <feed token>`: a credential, never logged.
    authorization: String,
    in_flight: Option<InFlight>,
    /// No report before this (monotonic ns).
    next_report_ns: u64,
    /// Whether the last report left keys of its window behind (sent next,
    /// without waiting for the interval).
    more: bool,
}

impl UsageReporter {
    /// A reporter to the service `source` names; its first report is due
    /// [`REPORT_INTERVAL_NS`] from now.
    pub fn new<H: Host>(source: &KeySource, host: &H) -> Self {
        Self {
            log: Rc::new(RefCell::new(UsageLog::new(host.wall_ns()))),
            cluster: source.cluster.clone(),
            authority: source.authority.clone(),
            authorization: format!("Bearer {}", source.token),
            in_flight: None,
            next_report_ns: host.monotonic_ns().saturating_add(REPORT_INTERVAL_NS),
            more: false,
        }
    }

    /// The log this configuration's requests record into.
    pub fn log(&self) -> Rc<RefCell<UsageLog>> {
        Rc::clone(&self.log)
    }

    /// The root context's tick: refreshes the log's clock, counts what the
    /// bound dropped, gives up on a report whose answer is long overdue,
    /// and sends the next report when it is due.
    pub fn tick<H: Host>(&mut self, host: &mut H) {
        let now = host.monotonic_ns();
        if let Some(call) = self.in_flight {
            if now >= call.deadline_ns {
                self.in_flight = None;
                self.failed(host, "no answer before the deadline", true);
            }
        }
        self.refresh(host);
        if self.in_flight.is_none() && (self.more || now >= self.next_report_ns) {
            self.send(host);
        }
    }

    /// Sends what is pending now, whatever the interval (a configuration
    /// being replaced hands in its last counts).
    pub fn flush<H: Host>(&mut self, host: &mut H) {
        self.refresh(host);
        if self.in_flight.is_none() {
            self.send(host);
        }
    }

    fn refresh<H: Host>(&mut self, host: &mut H) {
        let dropped = match self.log.try_borrow_mut() {
            Ok(mut log) => {
                log.set_clock(host.wall_ns());
                log.take_dropped()
            }
            Err(_) => 0,
        };
        if dropped > 0 {
            host.increment(Metric::UsageDropped, dropped);
        }
    }

    fn send<H: Host>(&mut self, host: &mut H) {
        let report = match self.log.try_borrow_mut() {
            Ok(mut log) => log.take_report(),
            Err(_) => None,
        };
        let Some(report) = report else {
            self.more = false;
            return;
        };
        let now = host.monotonic_ns();
        self.next_report_ns = now.saturating_add(REPORT_INTERVAL_NS);
        let call = HttpCall {
            cluster: &self.cluster,
            authority: &self.authority,
            method: "POST",
            path: REPORT_PATH,
            authorization: &self.authorization,
            content_type: "application/x-ndjson",
            body: &report.body,
            timeout_ms: REPORT_TIMEOUT_MS,
        };
        match host.dispatch_http(&call) {
            Ok(token) => {
                let slack = u64::from(REPORT_TIMEOUT_MS).saturating_add(5_000) * MS_NS;
                self.in_flight = Some(InFlight {
                    token,
                    deadline_ns: now.saturating_add(slack),
                    keys: report.keys,
                });
                self.more = !report.complete;
            }
            Err(error) => {
                let reason = format!("cannot call cluster {:?} ({error:?})", self.cluster);
                self.failed(host, &reason, true);
            }
        }
    }

    /// Takes the answer to call `token`; `false` when it is not this
    /// reporter's (the feed's, say).
    pub fn on_answer<H: Host>(&mut self, host: &mut H, token: u32) -> bool {
        let Some(call) = self.in_flight.filter(|call| call.token == token) else {
            return false;
        };
        self.in_flight = None;
        match http_answer_status(host) {
            Some(200) => {
                if let Ok(mut log) = self.log.try_borrow_mut() {
                    log.report_delivered();
                }
                host.increment(Metric::UsageReports, 1);
                if self.more {
                    self.send(host);
                }
            }
            Some(status @ (401 | 403 | 408 | 429 | 500..)) => {
                self.failed(host, &format!("status {status}"), true);
            }
            Some(status) => {
                let reason = format!(
                    "status {status}: refused, not retried ({} keys' counts dropped)",
                    call.keys
                );
                self.failed(host, &reason, false);
            }
            None => self.failed(
                host,
                "no answer (connection failed, reset or timed out)",
                true,
            ),
        }
        true
    }

    /// Counts and logs a report not delivered; `retry` merges it back.
    fn failed<H: Host>(&mut self, host: &mut H, reason: &str, retry: bool) {
        self.more = false;
        if let Ok(mut log) = self.log.try_borrow_mut() {
            if retry {
                log.report_failed();
            } else {
                log.report_refused();
            }
        }
        host.increment(Metric::UsageFailures, 1);
        let then = if retry {
            "kept for the next report, in 10 s"
        } else {
            "dropped"
        };
        host.log(
            LogLevel::Warn,
            &format!(
                "usage: report to cluster {:?} failed: {reason}; its counts are {then}",
                self.cluster
            ),
        );
    }
}

#[cfg(test)]
mod tests;
