//! Key usage on the native edge (contract §8.4): workers count, the main
//! thread reports.
//!
//! A usage report is an HTTP callout, and Envoy's workers have none
//! outside a stream; only a configuration, on the main thread, can make
//! one. So each worker counts its requests' key uses in a [`Shard`] of its
//! own (the core's [`UsageLog`] behind a lock only the main thread ever
//! contends for), and the main thread's configuration, on each tick and
//! before its core [`UsageReporter`](apikey_core::usage::UsageReporter)
//! runs, takes every shard's window and absorbs it into the log that
//! reporter sends: one reporter per process and lineage, with the core's
//! cadence (at most every 10 s), bound, retry and merge-back. A worker
//! with no streams still has its last uses reported, since the main
//! thread collects them, not the worker.
//!
//! A [`UsageRelay`] belongs to a lineage (the filter `apikey` or
//! `apikey:<instance>`), not to one Envoy configuration, so an ECDS
//! update does not strand what workers counted for the previous one: the
//! newest configuration of the lineage on the main thread collects every
//! shard, and a destroyed configuration hands back what it had not yet
//! sent ([`UsageRelay::hand_back`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use apikey_core::key_table::Lineage;
use apikey_core::usage::{UsageLog, UsageSink};

/// One worker's uses since the main thread last collected them.
pub struct Shard(Mutex<UsageLog>);

impl Shard {
    fn new(wall_ns: i64) -> Self {
        Self(Mutex::new(UsageLog::new(wall_ns)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UsageLog> {
        // A panic while recording leaves a whole log: keep counting.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A worker's end of its shard, which its streams count into.
pub struct WorkerUsage(Arc<Shard>);

impl UsageSink for WorkerUsage {
    /// The lock is the worker's own but for the instant the main thread
    /// swaps the window out (every tick), so a request does not wait.
    fn record(&self, id: &str) {
        self.0.lock().record(id);
    }
}

/// Where one lineage's workers leave their uses for the main thread.
#[derive(Default)]
pub struct UsageRelay {
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// The relay of each lineage that has a configuration alive.
static RELAYS: LazyLock<Mutex<HashMap<Lineage, Weak<UsageRelay>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl UsageRelay {
    /// The relay of `lineage`, shared by all its live configurations.
    pub fn of(lineage: Lineage) -> Arc<Self> {
        let mut relays = RELAYS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(relay) = relays.get(&lineage).and_then(Weak::upgrade) {
            return relay;
        }
        relays.retain(|_, relay| relay.strong_count() > 0);
        let relay = Arc::new(Self::default());
        relays.insert(lineage, Arc::downgrade(&relay));
        relay
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Shard>>> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new shard for one worker's configuration, its uses stamped with
    /// `wall_ns` until the main thread next collects.
    pub fn worker(&self, wall_ns: i64) -> WorkerUsage {
        let shard = Arc::new(Shard::new(wall_ns));
        self.shards().push(Arc::clone(&shard));
        WorkerUsage(shard)
    }

    /// Gives the relay what a destroyed configuration's log still held,
    /// for the next collection to take.
    pub fn hand_back(&self, log: UsageLog) {
        self.shards().push(Arc::new(Shard(Mutex::new(log))));
    }

    /// Moves every shard's uses into `into` (the main thread's reporter's
    /// log) and restamps the shards with `wall_ns`, the time their next
    /// uses are reported with. Each shard's lock is held only to swap its
    /// log for an empty one; the merge happens after. A shard no worker
    /// holds any more is collected one last time and forgotten.
    pub fn collect(&self, into: &mut UsageLog, wall_ns: i64) {
        let mut shards = self.shards();
        shards.retain(|shard| {
            // Read before the swap: a shard whose worker let go cannot be
            // recorded into after, so this collection is its last.
            let orphaned = Arc::strong_count(shard) == 1;
            let taken = {
                let mut log = shard.lock();
                if log.pending_keys() > 0 || orphaned {
                    Some(std::mem::replace(&mut *log, UsageLog::new(wall_ns)))
                } else {
                    log.set_clock(wall_ns);
                    None
                }
            };
            if let Some(taken) = taken {
                into.absorb(taken);
            }
            !orphaned
        });
    }

    /// Shards the relay holds (tests).
    pub fn shard_count(&self) -> usize {
        self.shards().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;
    /// 2026-12-05T10:00:00Z.
    const WALL: i64 = 1_796_464_800 * SECOND;

    /// The lines of `log`'s next report, sorted.
    fn report(log: &mut UsageLog) -> Vec<String> {
        let Some(report) = log.take_report() else {
            return Vec::new();
        };
        let mut lines: Vec<String> = String::from_utf8(report.body)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// A report line as the core writes it.
    fn line(id: &str, count: u64, at: &str) -> String {
        format!("{{\"id\":\"{id}\",\"count\":{count},\"last_used_at\":\"{at}\"}}")
    }

    #[test]
    fn every_workers_uses_reach_the_main_log_stamped_with_the_last_collection() {
        let relay = UsageRelay::default();
        let first = relay.worker(WALL);
        let second = relay.worker(WALL);
        first.record("k1");
        second.record("k1");
        second.record("k2");
        let mut main = UsageLog::new(WALL);
        relay.collect(&mut main, WALL + 3 * SECOND);
        first.record("k1");
        relay.collect(&mut main, WALL + 6 * SECOND);
        assert_eq!(
            report(&mut main),
            [
                line("k1", 3, "2026-12-05T10:00:03Z"),
                line("k2", 1, "2026-12-05T10:00:00Z")
            ],
            "uses lost, or not stamped with the collection before them"
        );
        relay.collect(&mut main, WALL + 9 * SECOND);
        main.report_delivered();
        assert!(report(&mut main).is_empty(), "a use was collected twice");
    }

    #[test]
    fn a_shard_its_worker_dropped_is_collected_once_more_then_forgotten() {
        let relay = UsageRelay::default();
        let kept = relay.worker(WALL);
        let dropped = relay.worker(WALL);
        dropped.record("k1");
        drop(dropped);
        let mut main = UsageLog::new(WALL);
        relay.collect(&mut main, WALL);
        assert_eq!(relay.shard_count(), 1, "the dropped worker's shard is kept");
        assert_eq!(report(&mut main), [line("k1", 1, "2026-12-05T10:00:00Z")]);
        kept.record("k2");
        relay.collect(&mut main, WALL);
        assert_eq!(
            relay.shard_count(),
            1,
            "a live worker's shard was forgotten"
        );
    }

    #[test]
    fn what_a_destroyed_configuration_held_goes_with_the_next_collection() {
        let relay = UsageRelay::default();
        let mut old = UsageLog::new(WALL);
        old.record("k1");
        relay.hand_back(old);
        let mut newer = UsageLog::new(WALL);
        relay.collect(&mut newer, WALL + SECOND);
        assert_eq!(report(&mut newer), [line("k1", 1, "2026-12-05T10:00:00Z")]);
        assert_eq!(
            relay.shard_count(),
            0,
            "a handed-back log was kept after collection"
        );
    }

    #[test]
    fn configurations_of_one_lineage_share_a_relay_and_others_do_not() {
        let lineage = Lineage::of(b"apikey", b"usage-test-a");
        let first = UsageRelay::of(lineage);
        let second = UsageRelay::of(lineage);
        assert!(Arc::ptr_eq(&first, &second), "one lineage, two relays");
        let other = UsageRelay::of(Lineage::of(b"apikey", b"usage-test-b"));
        assert!(!Arc::ptr_eq(&first, &other), "two lineages share a relay");
    }

    #[test]
    fn workers_counting_on_threads_lose_nothing_to_concurrent_collections() {
        let relay = Arc::new(UsageRelay::default());
        let per_thread = 20_000u64;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let worker = relay.worker(WALL);
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        worker.record("hot");
                    }
                })
            })
            .collect();
        let mut main = UsageLog::new(WALL);
        while !threads.iter().all(std::thread::JoinHandle::is_finished) {
            relay.collect(&mut main, WALL);
        }
        for thread in threads {
            thread.join().unwrap();
        }
        relay.collect(&mut main, WALL);
        assert_eq!(
            report(&mut main),
            [line("hot", 4 * per_thread, "2026-12-05T10:00:00Z")],
            "uses lost or doubled between the workers and the collector"
        );
        assert_eq!(relay.shard_count(), 0, "finished workers' shards were kept");
    }
}
