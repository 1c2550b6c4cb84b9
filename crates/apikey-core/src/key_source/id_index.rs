//! What the follower remembers of every key id: the hash of its latest
//! line (for the digest) and its key hash (to find its record).
//!
//! At a million keys this is the follower's largest structure, and Wasm
//! memory never shrinks, so it is kept compact: ids are held as 16 bytes
//! of their BLAKE3 hash (two ids of one table sharing them is as likely as
//! guessing a 128-bit number), in one vector filled by the snapshot and
//! then sorted (81 bytes per key, no per-entry allocation; a hash map of
//! `String` ids cost about three times that), plus a small map for ids
//! first seen in changes.

use std::collections::HashMap;

/// An id as the index holds it.
pub(super) type IdKey = [u8; 16];

/// What the follower knows of one key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Known {
    /// SHA-256 of its latest line.
    pub line: [u8; 32],
    /// Its key hash, when its record is in the table (`None`: its line was
    /// refused).
    pub key: Option<[u8; 32]>,
}

/// The index key of `id`.
pub(super) fn id_key(id: &str) -> IdKey {
    let mut key = [0u8; 16];
    if let Some(head) = blake3::hash(id.as_bytes()).as_bytes().first_chunk::<16>() {
        key = *head;
    }
    key
}

/// Every id of the table followed.
#[derive(Debug, Default)]
pub(super) struct IdIndex {
    /// Filled in snapshot order, then sorted by [`IdIndex::seal`].
    base: Vec<(IdKey, Known)>,
    sealed: bool,
    /// Ids first seen after the base was sealed.
    recent: HashMap<IdKey, Known>,
}

impl IdIndex {
    /// An index for a snapshot of about `keys` ids.
    pub(super) fn with_capacity(keys: usize) -> Self {
        Self {
            base: Vec::with_capacity(keys),
            ..Self::default()
        }
    }

    /// What is known of `id`.
    pub(super) fn get(&self, id: &IdKey) -> Option<Known> {
        if !self.sealed {
            return None;
        }
        match self.base.binary_search_by(|(key, _)| key.cmp(id)) {
            Ok(index) => self.base.get(index).map(|(_, known)| *known),
            Err(_) => self.recent.get(id).copied(),
        }
    }

    /// Records `id`'s latest; returns what it replaced. Before the index
    /// is sealed (while a snapshot's pages come in, each id once) ids are
    /// appended without a look-up.
    pub(super) fn insert(&mut self, id: IdKey, known: Known) -> Option<Known> {
        if !self.sealed {
            self.base.push((id, known));
            return None;
        }
        match self.base.binary_search_by(|(key, _)| key.cmp(&id)) {
            Ok(index) => self
                .base
                .get_mut(index)
                .map(|(_, slot)| core::mem::replace(slot, known)),
            Err(_) => self.recent.insert(id, known),
        }
    }

    /// Sorts the snapshot's ids for look-ups, in place (a stable sort
    /// would borrow half the vector again). An id given twice is kept
    /// once: the snapshot was wrong, and its key count and digest will
    /// not match the trailer's, so it is refused anyway.
    pub(super) fn seal(&mut self) {
        if self.sealed {
            return;
        }
        self.base.sort_unstable_by_key(|(key, _)| *key);
        self.base.dedup_by(|(a, _), (b, _)| a == b);
        self.sealed = true;
    }

    /// How many ids the index holds.
    pub(super) fn len(&self) -> usize {
        self.base.len() + self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn known(n: u8) -> Known {
        Known {
            line: [n; 32],
            key: Some([n; 32]),
        }
    }

    #[test]
    fn ids_appended_by_a_snapshot_are_found_once_sealed() {
        let mut index = IdIndex::with_capacity(3);
        for (n, id) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(index.insert(id_key(id), known(n as u8)), None);
        }
        index.seal();
        assert_eq!(index.get(&id_key("b")), Some(known(1)));
        assert_eq!(index.get(&id_key("z")), None);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn after_sealing_ids_are_replaced_or_added() {
        let mut index = IdIndex::with_capacity(1);
        index.insert(id_key("a"), known(1));
        index.seal();
        assert_eq!(index.insert(id_key("a"), known(2)), Some(known(1)));
        assert_eq!(index.insert(id_key("new"), known(3)), None);
        assert_eq!(index.insert(id_key("new"), known(4)), Some(known(3)));
        assert_eq!(index.get(&id_key("a")), Some(known(2)));
        assert_eq!(index.get(&id_key("new")), Some(known(4)));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_id_given_twice_in_a_snapshot_is_kept_once() {
        let mut index = IdIndex::with_capacity(3);
        index.insert(id_key("a"), known(1));
        index.insert(id_key("b"), known(2));
        index.insert(id_key("a"), known(3));
        index.seal();
        assert!(index.get(&id_key("a")).is_some());
        assert_eq!(index.len(), 2, "a duplicate id counted twice");
    }
}
