//! One VM per process follows the key service: the lease.
//!
//! Every VM of the process (the main thread's and each worker's) runs the
//! configuration, and each could fetch the feed; one is enough, and two
//! writers of one table would overwrite each other's shards. The VM named
//! in the lease entry fetches and writes; it renews the lease on every
//! tick, and a lease not renewed for [`STALE_NS`] (its VM trapped or
//! stopped ticking) is taken over by the next VM that looks.
//!
//! Envoy's compare-and-swap does not protect an entry's creation: two VMs
//! finding no lease can both write one and both believe they hold it. So a
//! lease taken counts only once it is found still held on a later tick
//! ([`Lease::Confirmed`]): by then the last of the concurrent writes has
//! landed, and only its VM finds its own name.

use crate::store::cursor::{Reader, Writer};
use crate::store::names::{live_lease_key, Lineage};
use crate::store::{SharedStore, StoreError};

/// A lease not renewed for this long is taken over. The holder renews it
/// every tick (100 ms); writing a table of a million keys between two
/// ticks takes well under this.
pub const STALE_NS: u64 = 1_000_000_000;

/// What [`hold`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// This VM holds the lease and held it on an earlier look: it fetches
    /// and writes.
    Confirmed,
    /// This VM just created the lease; it counts from the next look.
    Taken,
    /// Another live VM holds it.
    Elsewhere,
}

fn encode(holder: u64, renewed_ns: u64) -> Vec<u8> {
    let mut out = Writer::with_capacity(16);
    out.u64(holder).u64(renewed_ns);
    out.finish()
}

fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut reader = Reader::new(bytes);
    Some((reader.u64()?, reader.u64()?))
}

/// Renews `holder`'s lease on `lineage`'s feed, or takes it when nobody
/// holds it or its holder went quiet, at `now_ns` (the steady clock every
/// VM shares).
pub fn hold(
    store: &dyn SharedStore,
    lineage: &Lineage,
    holder: u64,
    now_ns: u64,
) -> Result<Lease, StoreError> {
    let name = live_lease_key(lineage);
    let current = store.get(&name)?;
    let found = current.as_ref().and_then(|(bytes, _)| decode(bytes));
    let cas = current.as_ref().map_or(0, |(_, cas)| *cas);
    let outcome = match found {
        Some((owner, _)) if owner == holder => Lease::Confirmed,
        Some((_, renewed)) if now_ns.saturating_sub(renewed) < STALE_NS => {
            return Ok(Lease::Elsewhere)
        }
        // Taking over an existing entry is a real compare-and-swap: only
        // one VM's write lands.
        Some(_) => Lease::Confirmed,
        // Creating one is not (module comment).
        None => Lease::Taken,
    };
    match store.set(&name, &encode(holder, now_ns), cas) {
        Ok(()) => Ok(outcome),
        // Another VM renewed or took it between the read and the write.
        Err(StoreError::CasMismatch) => Ok(Lease::Elsewhere),
        Err(error) => Err(error),
    }
}

/// Renews `holder`'s lease at `now_ns` if it still holds it; `false` when
/// it does not (another VM took it: stop writing). A writer calls this as
/// it goes, so a long write is never mistaken for a dead writer.
pub fn renew(
    store: &dyn SharedStore,
    lineage: &Lineage,
    holder: u64,
    now_ns: u64,
) -> Result<bool, StoreError> {
    let name = live_lease_key(lineage);
    let Some((bytes, cas)) = store.get(&name)? else {
        return Ok(false);
    };
    if decode(&bytes).map(|(owner, _)| owner) != Some(holder) {
        return Ok(false);
    }
    match store.set(&name, &encode(holder, now_ns), cas) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => is_held_by(store, lineage, holder),
        Err(error) => Err(error),
    }
}

/// Whether `holder` still holds the lease.
pub fn is_held_by(
    store: &dyn SharedStore,
    lineage: &Lineage,
    holder: u64,
) -> Result<bool, StoreError> {
    Ok(store
        .get(&live_lease_key(lineage))?
        .and_then(|(bytes, _)| decode(&bytes))
        .is_some_and(|(owner, _)| owner == holder))
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
    fn a_lease_counts_from_the_second_look() {
        let store = MemoryStore::new();
        assert_eq!(hold(&store, &lineage(), 1, 10).unwrap(), Lease::Taken);
        assert_eq!(hold(&store, &lineage(), 1, 20).unwrap(), Lease::Confirmed);
        assert!(is_held_by(&store, &lineage(), 1).unwrap());
    }

    #[test]
    fn a_live_lease_keeps_other_vms_out() {
        let store = MemoryStore::new();
        hold(&store, &lineage(), 1, 10).unwrap();
        assert_eq!(
            hold(&store, &lineage(), 2, 10 + STALE_NS - 1).unwrap(),
            Lease::Elsewhere,
            "a second VM took a live lease"
        );
        assert!(!is_held_by(&store, &lineage(), 2).unwrap());
    }

    #[test]
    fn a_quiet_lease_is_taken_over_and_its_old_holder_learns_it() {
        let store = MemoryStore::new();
        hold(&store, &lineage(), 1, 10).unwrap();
        hold(&store, &lineage(), 1, 20).unwrap();
        assert_eq!(
            hold(&store, &lineage(), 2, 20 + STALE_NS).unwrap(),
            Lease::Confirmed,
            "a takeover by compare-and-swap needs no second look"
        );
        assert!(
            !is_held_by(&store, &lineage(), 1).unwrap(),
            "the old holder still writes"
        );
        assert_eq!(
            hold(&store, &lineage(), 1, 30 + STALE_NS).unwrap(),
            Lease::Elsewhere,
            "the old holder took back a renewed lease"
        );
    }

    #[test]
    fn of_two_vms_creating_the_lease_at_once_only_the_last_confirms() {
        let store = MemoryStore::new();
        // Both read "no lease" and create it: Envoy's CAS lets both through.
        store
            .set(&live_lease_key(&lineage()), &encode(1, 10), 0)
            .unwrap();
        store
            .set(&live_lease_key(&lineage()), &encode(2, 10), 0)
            .unwrap();
        assert_eq!(hold(&store, &lineage(), 1, 20).unwrap(), Lease::Elsewhere);
        assert_eq!(hold(&store, &lineage(), 2, 20).unwrap(), Lease::Confirmed);
    }

    #[test]
    fn a_writer_renews_only_a_lease_it_holds() {
        let store = MemoryStore::new();
        assert!(
            !renew(&store, &lineage(), 1, 10).unwrap(),
            "renewed a lease never taken"
        );
        hold(&store, &lineage(), 1, 10).unwrap();
        assert!(renew(&store, &lineage(), 1, 10 + STALE_NS - 1).unwrap());
        assert_eq!(
            hold(&store, &lineage(), 2, 10 + STALE_NS + 1).unwrap(),
            Lease::Elsewhere,
            "a renewed lease was taken as stale"
        );
        assert!(
            !renew(&store, &lineage(), 2, 20).unwrap(),
            "renewed another VM's lease"
        );
    }

    #[test]
    fn a_conflicting_renewal_yields() {
        let store = MemoryStore::new();
        hold(&store, &lineage(), 1, 10).unwrap();
        store.inject_conflicts(1);
        assert_eq!(hold(&store, &lineage(), 1, 20).unwrap(), Lease::Elsewhere);
    }
}
