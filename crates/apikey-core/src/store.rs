//! Shared data: the port to proxy-wasm's process-wide map, and the one
//! way this crate changes an entry in it.
//!
//! Shared data is a map of byte values with a compare-and-swap token per
//! entry, no delete, and a CAS on an entry that does not exist that always
//! succeeds (proxy-wasm-cpp-host's `SharedData`). Every worker of the
//! process reads and writes it at once, so every read-modify-write goes
//! through [`update`]: read, let the caller decide, write with the token
//! read, and on a conflict read again, at most [`MAX_RETRIES`] times. A
//! conflict that outlasts the retries is [`StoreError::Contention`], never
//! a silent success: the caller decides what giving up means (a token
//! bucket denies the request). Every entry's name is built in [`names`],
//! and every stored record is read and written with [`cursor`].

pub mod cursor;
pub mod names;

/// The shared-data operations the filter needs.
pub trait SharedStore {
    /// The value and CAS token of `key`, or `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` when the entry's CAS token is still `cas`; `cas == 0`
    /// writes unconditionally (as it does for an entry that does not exist).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// A shared-data failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another writer changed the entry since it was read.
    CasMismatch,
    /// The host refused the call, with its status code.
    Host(u32),
    /// Too many CAS conflicts in a row ([`update`] gave up).
    Contention,
}

/// How many CAS conflicts in a row [`update`] retries; the next one is
/// [`StoreError::Contention`]. Eight lets a token bucket hot on every
/// worker of an eight-core Envoy settle (each retry follows a write that
/// won), while bounding the work of a request that keeps losing.
pub const MAX_RETRIES: u32 = 8;

/// What an [`update`]'s closure decided about the entry it was shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T> {
    /// Write these bytes in place of what was read, then answer `T`.
    Write(Vec<u8>, T),
    /// Write nothing and answer `T`.
    Keep(T),
}

/// What an [`update`] answered, with the conflicts it retried on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Updated<T> {
    /// The closure's answer on the attempt that ended the update.
    pub value: T,
    /// CAS conflicts retried before it.
    pub conflicts: u32,
}

/// Changes the entry `key` by compare-and-swap: `decide` is shown its
/// current value (`None` when it does not exist) and returns the new value
/// or a decision not to write; a write that loses to another writer reads
/// the entry again and asks `decide` again, up to [`MAX_RETRIES`] times.
///
/// `decide` may run several times, each time on what another writer left:
/// it must decide from the value it is shown, not from an earlier one.
/// Writing an entry that did not exist is not protected by the CAS (Envoy
/// accepts any token for it), so two writers creating one entry at once
/// both succeed, the later overwriting the earlier; callers that cannot
/// afford that create entries only where no one else can (see
/// `key_table`'s bucket pre-creation).
pub fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    mut decide: impl FnMut(Option<&[u8]>) -> Change<T>,
) -> Result<Updated<T>, StoreError> {
    for conflicts in 0..=MAX_RETRIES {
        let current = store.get(key)?;
        let (value, cas) = match &current {
            Some((bytes, cas)) => (Some(bytes.as_slice()), *cas),
            None => (None, 0),
        };
        let (bytes, answer) = match decide(value) {
            Change::Keep(answer) => {
                return Ok(Updated {
                    value: answer,
                    conflicts,
                })
            }
            Change::Write(bytes, answer) => (bytes, answer),
        };
        match store.set(key, &bytes, cas) {
            Ok(()) => {
                return Ok(Updated {
                    value: answer,
                    conflicts,
                })
            }
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Contention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn increment(store: &MemoryStore) -> Result<Updated<u8>, StoreError> {
        update(store, "counter", |current| {
            let next = current.and_then(|bytes| bytes.first()).map_or(1, |n| n + 1);
            Change::Write(vec![next], next)
        })
    }

    #[test]
    fn an_update_writes_what_the_closure_returns() {
        let store = MemoryStore::new();
        assert_eq!(
            increment(&store),
            Ok(Updated {
                value: 1,
                conflicts: 0
            })
        );
        assert_eq!(increment(&store).map(|u| u.value), Ok(2));
        assert_eq!(store.get("counter").unwrap().map(|(v, _)| v), Some(vec![2]));
    }

    #[test]
    fn keeping_writes_nothing() {
        let store = MemoryStore::new();
        let kept = update(&store, "absent", |current| Change::Keep(current.is_none()));
        assert_eq!(kept.map(|u| u.value), Ok(true), "the closure saw an entry");
        assert!(store.is_empty(), "a kept update wrote");
    }

    #[test]
    fn conflicts_are_retried_on_the_value_another_writer_left() {
        let store = MemoryStore::new();
        increment(&store).unwrap();
        store.inject_conflicts(MAX_RETRIES);
        assert_eq!(
            increment(&store),
            Ok(Updated {
                value: 2,
                conflicts: MAX_RETRIES
            }),
            "the last retry did not write"
        );
    }

    #[test]
    fn contention_beyond_the_retries_is_an_error_not_a_success() {
        let store = MemoryStore::new();
        increment(&store).unwrap();
        store.inject_conflicts(MAX_RETRIES + 1);
        let writes = store.writes();
        assert_eq!(increment(&store), Err(StoreError::Contention));
        assert_eq!(store.writes(), writes, "a contended update wrote");
    }

    /// Another worker writes between every read and write.
    struct Racing {
        inner: MemoryStore,
    }

    impl SharedStore for Racing {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            let read = self.inner.get(key)?;
            self.inner.set(key, b"theirs", 0)?;
            Ok(read)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_real_race_is_bounded() {
        let store = Racing {
            inner: MemoryStore::new(),
        };
        store.inner.set("entry", b"first", 0).unwrap();
        let mut calls = 0;
        let result = update(&store, "entry", |_| {
            calls += 1;
            Change::Write(b"mine".to_vec(), ())
        });
        assert_eq!(result, Err(StoreError::Contention));
        assert_eq!(calls, MAX_RETRIES + 1, "attempts made");
    }

    /// Refuses every call, as a host would with a bad status.
    struct Refusing;

    impl SharedStore for Refusing {
        fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            Err(StoreError::Host(3))
        }

        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Host(3))
        }
    }

    #[test]
    fn a_host_failure_is_reported_at_once() {
        let result = update(&Refusing, "entry", |_| Change::Write(Vec::new(), ()));
        assert_eq!(result, Err(StoreError::Host(3)));
    }
}
