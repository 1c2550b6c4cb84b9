//! Counting a refused configuration once per Envoy process, not once per
//! VM.
//!
//! Every VM of the process (each worker, and the main thread's) reads the
//! same configuration and refuses it for the same reason; the
//! `apikey.config.refused` counter must still count one refusal. The first
//! VM to refuse a configuration records its digest in shared data, per
//! lineage (two filters refusing in turn both count); a VM that finds that
//! digest already recorded does not count it.

use crate::key_table::Digest;
use crate::store::names::{last_refused_key, Lineage};
use crate::store::{self, Change, SharedStore, StoreError};

/// Records that `lineage` refused the configuration whose bytes hash to
/// `digest`: `true` when this VM is the first to, and so counts it;
/// `false` when the last refusal recorded was already this one. Should
/// the store fail, the caller cannot know; the filter then counts (a
/// refusal counted twice is better than one never seen).
pub fn first_to_refuse(
    store: &dyn SharedStore,
    lineage: &Lineage,
    digest: &Digest,
) -> Result<bool, StoreError> {
    let updated = store::update(store, &last_refused_key(lineage), |last| {
        if last == Some(digest.as_slice()) {
            Change::Keep(false)
        } else {
            Change::Write(digest.to_vec(), true)
        }
    })?;
    Ok(updated.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn lineage() -> Lineage {
        Lineage::of(b"apikey", b"apikey")
    }

    #[test]
    fn a_refused_configuration_is_counted_by_the_first_vm_only() {
        let store = MemoryStore::new();
        assert_eq!(first_to_refuse(&store, &lineage(), &[1; 32]), Ok(true));
        for vm in 1..4 {
            assert_eq!(
                first_to_refuse(&store, &lineage(), &[1; 32]),
                Ok(false),
                "VM {vm} counted a refusal already counted"
            );
        }
    }

    #[test]
    fn another_configuration_or_another_filter_counts_again() {
        let store = MemoryStore::new();
        let partner = Lineage::of(b"partner", b"apikey");
        assert_eq!(first_to_refuse(&store, &lineage(), &[1; 32]), Ok(true));
        assert_eq!(
            first_to_refuse(&store, &partner, &[1; 32]),
            Ok(true),
            "another filter's refusal of the same text was not counted"
        );
        assert_eq!(
            first_to_refuse(&store, &lineage(), &[2; 32]),
            Ok(true),
            "a different bad configuration was not counted"
        );
        assert_eq!(
            first_to_refuse(&store, &lineage(), &[1; 32]),
            Ok(true),
            "a configuration refused again after another was not counted"
        );
    }

    /// Another VM records the same refusal between this VM's read and write.
    struct RacingVm {
        inner: MemoryStore,
        digest: Digest,
    }

    impl SharedStore for RacingVm {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            let read = self.inner.get(key)?;
            if read.is_some() {
                self.inner.set(key, &self.digest, 0)?;
            }
            Ok(read)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_vm_that_loses_the_race_to_record_the_same_refusal_does_not_count() {
        let store = RacingVm {
            inner: MemoryStore::new(),
            digest: [3; 32],
        };
        store
            .inner
            .set(&last_refused_key(&lineage()), &[1; 32], 0)
            .unwrap();
        assert_eq!(
            first_to_refuse(&store, &lineage(), &[3; 32]),
            Ok(false),
            "both VMs counted one refusal"
        );
    }

    #[test]
    fn contention_is_reported_not_counted_as_recorded() {
        let store = MemoryStore::new();
        first_to_refuse(&store, &lineage(), &[1; 32]).unwrap();
        store.inject_conflicts(u32::MAX);
        assert_eq!(
            first_to_refuse(&store, &lineage(), &[2; 32]),
            Err(StoreError::Contention)
        );
    }
}
