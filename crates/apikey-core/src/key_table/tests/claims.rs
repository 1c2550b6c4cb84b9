//! Generations and claims: a lost head never brings a generation back
//! (issue 17 finding 6), and a claim whose writer died is taken over
//! within a bound while a live writer keeps its own (finding 7).

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

// Generations are never reused (issue 17 finding 6).

#[test]
fn an_unreadable_head_never_reuses_a_generation() {
    let store = MemoryStore::new();
    let both = config(&[("a", "key-a"), ("b", "key-b")]);
    ready(publish(&store, &lineage(), &digest(1), &both, b"", &|| 1_000).unwrap());
    ready(
        publish(
            &store,
            &lineage(),
            &digest(2),
            &config(&[("a", "key-a")]),
            b"",
            &|| 2_000,
        )
        .unwrap(),
    );
    // A module with another head format (sharing the vm_id during an
    // upgrade) overwrote the head; the banks still hold the old records.
    store
        .set(&head_key(&lineage()), b"\x09another format", 0)
        .unwrap();
    let newest = config(&[("c", "key-c")]);
    let table = ready(publish(&store, &lineage(), &digest(3), &newest, b"", &|| 3_000).unwrap());
    assert_eq!(
        lookup(&store, table, "key-b"),
        None,
        "a key removed two tables ago authenticated again in generation {}",
        table.generation
    );
    assert_eq!(
        lookup(&store, table, "key-a"),
        None,
        "key-a of an old table answered"
    );
    assert_eq!(lookup(&store, table, "key-c").as_deref(), Some("c"));
}

#[test]
fn generations_never_fall_below_the_clock() {
    let store = MemoryStore::new();
    let first =
        ready(publish(&store, &lineage(), &digest(1), &config(&[]), b"", &|| 5_000).unwrap());
    assert!(
        first.generation >= 5_000,
        "generation {} below the clock",
        first.generation
    );
    // Within one nanosecond of the clock, the head's count still moves on.
    let second =
        ready(publish(&store, &lineage(), &digest(2), &config(&[]), b"", &|| 5_000).unwrap());
    assert!(
        second.generation > first.generation,
        "{second:?} after {first:?}"
    );
}

// Abandoned claims (issue 17 finding 7).

fn many_keys(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("k{i}"), format!("key-{i}")))
        .collect()
}

fn borrowed(keys: &[(String, String)]) -> Vec<(&str, &str)> {
    keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// A store whose every write moves a fake clock on by `step_ns`, and which
/// runs `during` (a waiting worker, a dying host) after each write.
struct Timeline<'a> {
    inner: MemoryStore,
    clock: std::cell::Cell<u64>,
    step_ns: u64,
    writes: std::cell::Cell<usize>,
    during: &'a dyn Fn(&Timeline<'_>, usize) -> Result<(), StoreError>,
}

impl<'a> Timeline<'a> {
    fn new(
        step_ns: u64,
        during: &'a dyn Fn(&Timeline<'_>, usize) -> Result<(), StoreError>,
    ) -> Self {
        Self {
            inner: MemoryStore::new(),
            clock: std::cell::Cell::new(1_000_000_000),
            step_ns,
            writes: std::cell::Cell::new(0),
            during,
        }
    }

    fn now(&self) -> u64 {
        self.clock.get()
    }
}

impl SharedStore for Timeline<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)?;
        self.clock.set(self.clock.get() + self.step_ns);
        self.writes.set(self.writes.get() + 1);
        (self.during)(self, self.writes.get())
    }
}

/// The writer's claim in the head of `lineage()`, if one stands.
fn writing_claim(store: &dyn SharedStore) -> Option<(u64, u64)> {
    let head = read_head(store, &lineage()).unwrap();
    head.banks.iter().find_map(|bank| match bank.state {
        BankState::Writing {
            started_ns,
            renewed_ns,
        } => Some((started_ns, renewed_ns)),
        _ => None,
    })
}

#[test]
fn a_claim_abandoned_mid_write_is_taken_over_and_completed_within_the_bound() {
    let keys = many_keys(3000);
    let config = config(&borrowed(&keys));
    // The writer's host dies (a trap) after 2500 of its writes.
    let dies = |_: &Timeline<'_>, writes: usize| {
        if writes == 2500 {
            Err(StoreError::Host(99))
        } else {
            Ok(())
        }
    };
    let store = Timeline::new(100_000, &dies);
    let died = publish(&store, &lineage(), &digest(1), &config, b"", &|| {
        store.now()
    });
    assert_eq!(died, Err(StoreError::Host(99)));
    let died_at = store.now();
    let (_, renewed_ns) = writing_claim(&store.inner).expect("the dead writer's claim is gone");
    assert!(
        renewed_ns > 1_000_000_000,
        "the writer never renewed its claim"
    );

    // A waiting worker polls every 50 ms: it waits while the claim is
    // fresh, and takes it over once it was not renewed for the bound.
    let mut now = died_at;
    let outcome = loop {
        let outcome = publish(&store.inner, &lineage(), &digest(1), &config, b"", &|| now).unwrap();
        if outcome != Publication::Pending {
            break outcome;
        }
        assert!(
            now < renewed_ns + STALE_CLAIM_NS,
            "the abandoned claim was not taken over {} ms after its last renewal",
            (now - renewed_ns) / 1_000_000
        );
        now += 50_000_000;
    };
    let Publication::Written(table) = outcome else {
        panic!("the waiting worker did not write the table: {outcome:?}");
    };
    assert!(
        now - renewed_ns <= STALE_CLAIM_NS + 50_000_000,
        "taken over {} ms after the last renewal",
        (now - renewed_ns) / 1_000_000
    );
    for (id, raw) in borrowed(&keys) {
        assert_eq!(
            lookup(&store.inner, table, raw).as_deref(),
            Some(id),
            "{id} missing after the takeover"
        );
    }
}

#[test]
fn a_live_slow_writer_is_not_disturbed() {
    let keys = many_keys(5000);
    let config = config(&borrowed(&keys));
    let waiting = std::cell::RefCell::new(Vec::new());
    // 0.5 ms per write: renewals (every 1024 records) come ~0.5 s apart,
    // and the whole table takes 2.5 s, past the bound. A worker waiting
    // for the same table asks every 200 writes (100 ms).
    let ask = |store: &Timeline<'_>, writes: usize| {
        if writes % 200 == 0 {
            let now = store.now();
            let outcome = publish(&store.inner, &lineage(), &digest(1), &config, b"", &|| now)?;
            waiting.borrow_mut().push(outcome);
        }
        Ok(())
    };
    let store = Timeline::new(500_000, &ask);
    let started = store.now();
    let outcome = publish(&store, &lineage(), &digest(1), &config, b"", &|| {
        store.now()
    })
    .unwrap();
    assert!(
        store.now() - started > 2 * STALE_CLAIM_NS,
        "the write was not slow enough to test anything"
    );
    let table = match outcome {
        Publication::Written(table) => table,
        other => panic!("the slow writer lost its claim: {other:?}"),
    };
    let asked = waiting.borrow();
    let disturbed: Vec<_> = asked
        .iter()
        .filter(|outcome| {
            **outcome != Publication::Pending && **outcome != Publication::Ready(table)
        })
        .collect();
    assert!(
        asked.len() > 20,
        "the waiting worker asked only {} times",
        asked.len()
    );
    assert!(
        disturbed.is_empty(),
        "a waiting worker took a live claim over: {disturbed:?}"
    );
    assert_eq!(
        lookup(&store.inner, table, "key-4999").as_deref(),
        Some("k4999")
    );
}

#[test]
fn a_writer_stalled_past_the_bound_loses_its_claim_and_its_late_writes_do_no_harm() {
    let keys = many_keys(3000);
    let config = config(&borrowed(&keys));
    let taker = std::cell::RefCell::new(None);
    // After 1500 writes the writer stalls for 2 s; a waiting worker takes
    // the claim over and completes the table before the writer resumes.
    let stall = |store: &Timeline<'_>, writes: usize| {
        if writes == 1500 {
            store.clock.set(store.now() + 2 * STALE_CLAIM_NS);
            let now = store.now();
            *taker.borrow_mut() = Some(publish(
                &store.inner,
                &lineage(),
                &digest(1),
                &config,
                b"",
                &|| now,
            )?);
        }
        Ok(())
    };
    let store = Timeline::new(1_000, &stall);
    let stalled = publish(&store, &lineage(), &digest(1), &config, b"", &|| {
        store.now()
    })
    .unwrap();
    let Some(Publication::Written(table)) = *taker.borrow() else {
        panic!("the waiting worker did not take over: {:?}", taker.borrow());
    };
    assert!(
        matches!(stalled, Publication::Pending | Publication::Ready(_)),
        "the stalled writer still claims to have written the table: {stalled:?}"
    );
    assert_eq!(
        ready_table(&store.inner, &lineage(), &digest(1))
            .unwrap()
            .map(|r| r.table),
        Some(table)
    );
    for (id, raw) in borrowed(&keys) {
        assert_eq!(
            lookup(&store.inner, table, raw).as_deref(),
            Some(id),
            "{id} lost to the stalled writer's late writes"
        );
    }
}
