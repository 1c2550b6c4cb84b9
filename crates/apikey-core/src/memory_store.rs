//! An in-memory [`SharedStore`] with Envoy's semantics, for tests and fuzzing.
//!
//! It mirrors proxy-wasm-cpp-host's `SharedData`: every write takes a new
//! CAS token from one process-wide counter, a CAS of 0 or on an entry that
//! does not exist always succeeds, and there is no delete. Tests can make
//! the next writes fail with a CAS conflict, as a racing worker would.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::store::{SharedStore, StoreError};

/// A single-threaded stand-in for proxy-wasm shared data.
#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    injected_conflicts: Cell<u32>,
    writes: Cell<u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` conditional writes to existing entries fail
    /// with [`StoreError::CasMismatch`], as if another worker had won.
    pub fn inject_conflicts(&self, count: u32) {
        self.injected_conflicts.set(count);
    }

    /// How many writes succeeded so far.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// How many entries exist.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut entries = self.entries.borrow_mut();
        if let Some((_, current)) = entries.get(key) {
            let injected = self.injected_conflicts.get();
            if cas != 0 && injected > 0 {
                self.injected_conflicts.set(injected - 1);
                return Err(StoreError::CasMismatch);
            }
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let token = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(token);
        entries.insert(key.to_owned(), (value.to_vec(), token));
        self.writes.set(self.writes.get() + 1);
        Ok(())
    }
}
