#![allow(clippy::arithmetic_side_effects)]
use super::*;
use crate::bucket_store::EMPTY_BUCKETS;
use crate::memory_store::MemoryStore;
use crate::store::names::buckets_key;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;

fn lineage() -> Lineage {
    Lineage::of(b"apikey", b"apikey")
}

fn store() -> MemoryStore {
    let store = MemoryStore::new();
    store
        .set(&buckets_key(&lineage(), "k"), EMPTY_BUCKETS, 0)
        .unwrap();
    store
}

fn limit(requests: u64, period_seconds: u64, burst: u64) -> Limit {
    Limit {
        requests,
        period_seconds,
        burst,
    }
}

fn take(book: &LeaseBook, store: &MemoryStore, limit: &Limit, now_ns: u64) -> Taken {
    book.take(store, &lineage(), "k", "*", limit, now_ns)
        .unwrap()
}

fn is_allowed(taken: Taken) -> bool {
    matches!(taken, Taken::Allowed { .. })
}

#[test]
fn a_busy_key_spends_its_lease_without_writing_shared_data() {
    let store = store();
    let book = LeaseBook::default();
    let limit = limit(1_000_000, 1, 1_000_000);
    let before = store.writes();
    for i in 0..MAX_LEASE_TOKENS {
        assert!(
            is_allowed(take(&book, &store, &limit, i)),
            "request {i} denied"
        );
    }
    assert_eq!(
        store.writes() - before,
        1,
        "{} requests should have cost one shared write (one lease)",
        MAX_LEASE_TOKENS
    );
}

#[test]
fn a_key_near_its_limit_is_taken_one_token_at_a_time() {
    let store = store();
    let book = LeaseBook::default();
    // 20 tokens: a sixteenth is one token, so no lease is ever taken.
    let limit = limit(10, 1, 20);
    let before = store.writes();
    let admitted = (0..40)
        .filter(|_| is_allowed(take(&book, &store, &limit, 0)))
        .count();
    assert_eq!(admitted, 20);
    assert_eq!(
        store.writes() - before,
        20,
        "a lease was taken near the limit"
    );
}

#[test]
fn a_lease_holds_at_most_what_the_bucket_refills_while_it_lasts() {
    // 40 per second refill 10 in 250 ms; the burst of 10,000 would allow 625.
    assert_eq!(lease_size(10_000, &limit(40, 1, 10_000)), 10);
    assert_eq!(lease_size(10_000, &limit(1, 60, 10_000)), 1);
    assert_eq!(
        lease_size(u64::MAX, &limit(1_000_000_000, 1, 1_000_000_000)),
        MAX_LEASE_TOKENS
    );
}

#[test]
fn remaining_counts_the_lease_as_one_worker_sees_it() {
    let store = store();
    let book = LeaseBook::default();
    let limit = limit(1_000, 1, 1_000);
    let remaining: Vec<u64> = (0..5)
        .map(|_| match take(&book, &store, &limit, 0) {
            Taken::Allowed { remaining, .. } => remaining,
            other => panic!("denied: {other:?}"),
        })
        .collect();
    assert_eq!(remaining, vec![999, 998, 997, 996, 995]);
}

#[test]
fn a_denial_is_answered_locally_until_a_token_can_exist() {
    let store = store();
    let book = LeaseBook::default();
    let limit = limit(1, 10, 1); // one token every 10 s
    assert!(is_allowed(take(&book, &store, &limit, 0)));
    let writes = store.writes();
    let Taken::Denied { retry_after } = take(&book, &store, &limit, SECOND) else {
        panic!("a second token within 10 s")
    };
    assert_eq!(retry_after, 9);
    // Make the shared bucket unreadable: a local denial must not read it.
    store.set(&buckets_key(&lineage(), "k"), b"", 0).unwrap();
    assert!(matches!(
        take(&book, &store, &limit, 5 * SECOND),
        Taken::Denied { retry_after: 5 }
    ));
    assert_eq!(store.writes(), writes + 1, "only the test wrote");
}

#[test]
fn a_remembered_denial_ends_when_the_next_token_arrives() {
    let store = store();
    let book = LeaseBook::default();
    let limit = limit(1, 10, 1);
    assert!(is_allowed(take(&book, &store, &limit, 0)));
    assert!(!is_allowed(take(&book, &store, &limit, SECOND)));
    assert!(!is_allowed(take(&book, &store, &limit, 10 * SECOND - 1)));
    assert!(
        is_allowed(take(&book, &store, &limit, 10 * SECOND)),
        "the token minted at 10 s was refused"
    );
}

#[test]
fn an_abandoned_lease_frees_its_capacity_when_it_expires() {
    let store = store();
    let limit = limit(100, 1, 1_000);
    let idle = LeaseBook::default();
    assert!(is_allowed(take(&idle, &store, &limit, 0))); // leases 25, spends 1
    let busy = LeaseBook::default();
    // The busy worker drains the bucket, then keeps asking as it refills.
    let mut admitted = 0;
    for ms in 0..=2_000u64 {
        for _ in 0..10 {
            if is_allowed(take(&busy, &store, &limit, ms * MS)) {
                admitted += 1;
            }
        }
    }
    // Burst 1,000 plus 2 s at 100/s, less the idle worker's lease (25 of
    // which it spent 1): the 24 unspent tokens are lost, no more.
    assert_eq!(admitted + 1, 1_000 + 200 - 24);
}

/// A tiny deterministic generator, so the interleavings are the same on
/// every run and on both targets.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 33) % below
    }
}

/// Eight workers asking one bucket in random order at random instants
/// (several per nanosecond sometimes, idle stretches others): every
/// window between two admissions holds at most `burst + rate × elapsed`.
#[test]
fn eight_workers_never_admit_more_than_burst_plus_refill_in_any_window() {
    for (seed, limit) in [
        (1, limit(50, 1, 100)),
        (2, limit(1_000, 1, 5_000)),
        (3, limit(7, 1, 40)),
        (4, limit(100_000, 1, 2_000)),
    ] {
        let store = store();
        let workers: Vec<LeaseBook> = (0..8).map(|_| LeaseBook::default()).collect();
        let mut steps = Steps(seed);
        let mut now = 0u64;
        let mut admitted_at = Vec::new();
        for _ in 0..40_000 {
            now += match steps.next(10) {
                0 => 50 * MS, // an idle stretch: leases expire
                1..=3 => 0,
                _ => steps.next(2 * MS),
            };
            let worker = &workers[usize::try_from(steps.next(8)).unwrap()];
            if is_allowed(take(worker, &store, &limit, now)) {
                admitted_at.push(now);
            }
        }
        // Windows starting and ending at an admission (the tightest).
        let rate_per_ns = |elapsed: u64| {
            u128::from(elapsed) * u128::from(limit.requests)
                / (u128::from(limit.period_seconds) * u128::from(SECOND))
        };
        let end = admitted_at.len() - 1;
        for start in (0..admitted_at.len()).step_by(7) {
            // Short windows one by one, longer ones sampled, and the longest.
            let near = start..admitted_at.len().min(start + 600);
            let far = (start..admitted_at.len()).step_by(97);
            for last in near.chain(far).chain([end]) {
                let count = u128::try_from(last - start + 1).unwrap();
                let bound =
                    u128::from(limit.burst) + rate_per_ns(admitted_at[last] - admitted_at[start]);
                assert!(
                    count <= bound,
                    "limit {limit:?}: {count} admitted between {} and {} ns, bound {bound}",
                    admitted_at[start],
                    admitted_at[last]
                );
            }
        }
        assert!(admitted_at.len() > usize::try_from(limit.burst).unwrap());
    }
}

#[test]
fn a_lease_keeps_its_tokens_out_of_a_bucket_that_refills_meanwhile() {
    let store = store();
    let limit = limit(1_000, 1, 1_000);
    let holder = LeaseBook::default();
    // Leases 62 tokens of the full bucket and spends one.
    assert!(is_allowed(take(&holder, &store, &limit, 0)));
    // 100 ms later the bucket would be full again were the lease's 61
    // unspent tokens not held out of it; another worker drains it, and the
    // holder spends its lease, all at one instant.
    let now = 100 * MS;
    let drainer = LeaseBook::default();
    let drained = (0..2_000)
        .filter(|_| is_allowed(take(&drainer, &store, &limit, now)))
        .count();
    let spent = (0..100)
        .filter(|_| is_allowed(take(&holder, &store, &limit, now)))
        .count();
    assert_eq!(spent, 61, "the holder's lease");
    assert!(
        drained + spent <= 1_000,
        "{drained} + {spent} admitted at one instant with a burst of 1,000"
    );
}

#[test]
fn an_expired_lease_is_not_spent() {
    let store = store();
    let limit = limit(1_000, 1, 1_000);
    let holder = LeaseBook::default();
    assert!(is_allowed(take(&holder, &store, &limit, 0)));
    let writes = store.writes();
    assert!(is_allowed(take(&holder, &store, &limit, LEASE_VALIDITY_NS)));
    assert_eq!(
        store.writes(),
        writes + 1,
        "a token was spent from a lease at its expiry instead of the bucket"
    );
}
