//! Every shared-data name the filter uses, spelt here and nowhere else.
//!
//! Shared data is keyed by `vm_id` only, so every filter configuration of
//! the process that shares a `vm_id` shares it too (contract §7.1: each
//! must still be enforced as if alone). Every entry of a configuration is
//! therefore named under its [`Lineage`], the filter instance across all
//! its updates: `apikey.v1.<lineage>.<entry>`, the lineage spelt as 16 hex
//! digits. The one entry shared by every configuration of the process, a
//! fleet cluster's circuit, is `apikey.v1.fleet.<cluster>`: `fleet` is not
//! 16 hex digits, so no lineage's entry can take its name.
//!
//! Within a lineage: `head`; `b0.settings` and `b1.settings`;
//! `b<bank>.<sha256>` for records; `rl.<key id>` for buckets;
//! `known_buckets`; `last_refused`; for a table followed from the key
//! service, `ks.head`, `ks.lease`, `ks.b<bank>.settings` and
//! `ks.b<bank>.s<shard in hex>`. A key id can only reach names under
//! `rl.`, and a key hash only names of 64 hex digits, so neither can spell
//! another entry's name. README.md's storage table counts each of them.

use crate::key_hash::KeyHash;

/// Every name starts with this: the `v1` changes if names ever do.
const ROOT: &str = "apikey.v1.";

/// One filter instance across its updates, naming every shared-data entry
/// of its tables and buckets.
///
/// Envoy hands a Wasm plugin its `name` ("a unique name for a filter in a
/// VM, to tell filters apart when several share a `vm_id` and `root_id`")
/// and `root_id`; both stay the same when the plugin's configuration is
/// updated, and differ between two filters of one process unless the
/// operator gave them the same (the README says they must not). The pair
/// is hashed into a short fixed-length token, so key names stay short
/// whatever the names; 64 bits make two lineages of one process sharing a
/// token as likely as guessing a 64-bit number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lineage([u8; 8]);

impl Lineage {
    /// The lineage of the plugin named `name` with root id `root_id`.
    pub fn of(name: &[u8], root_id: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"apikey lineage\0");
        // The length keeps ("ab", "c") apart from ("a", "bc").
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(root_id);
        let hash = hasher.finalize();
        let mut token = [0u8; 8];
        if let Some(first) = hash.as_bytes().first_chunk::<8>() {
            token = *first;
        }
        Self(token)
    }

    /// `apikey.v1.<token>.<suffix>`; `key("")` is the prefix of every
    /// entry of the lineage (as the edge logs it). Entries are named by
    /// the functions below, not by calling this with their suffix.
    pub fn key(&self, suffix: &str) -> String {
        let mut key = self.prefix(suffix.len());
        key.push_str(suffix);
        key
    }

    /// `apikey.v1.<token>.`, with room for `more` bytes: a record's name is
    /// built with one allocation, a million times per table write.
    fn prefix(&self, more: usize) -> String {
        let mut key = String::with_capacity(ROOT.len() + 17 + more);
        key.push_str(ROOT);
        for byte in self.0 {
            for nibble in [byte >> 4, byte & 0x0f] {
                key.push(char::from(if nibble < 10 {
                    b'0' + nibble
                } else {
                    b'a' + nibble - 10
                }));
            }
        }
        key.push('.');
        key
    }
}

impl core::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Lineage({})", self.key(""))
    }
}

/// The head of `lineage`'s table: which configuration each bank holds.
pub fn head_key(lineage: &Lineage) -> String {
    lineage.key("head")
}

/// The settings of the table in `bank` (0 or 1) of `lineage`.
pub fn settings_key(lineage: &Lineage, bank: u8) -> String {
    lineage.key(if bank == 0 {
        "b0.settings"
    } else {
        "b1.settings"
    })
}

/// The shared-data key of a record in `bank` of `lineage`'s table.
pub fn record_key(lineage: &Lineage, bank: u8, hash: &KeyHash) -> String {
    let mut key = lineage.prefix(68);
    key.push_str(if bank == 0 { "b0." } else { "b1." });
    hash.push_hex(&mut key);
    key
}

/// The head of `lineage`'s followed table (`key_source`): which bank,
/// build and feed generation the workers serve.
pub fn live_head_key(lineage: &Lineage) -> String {
    lineage.key("ks.head")
}

/// Which VM of the process follows the key service for `lineage`.
pub fn live_lease_key(lineage: &Lineage) -> String {
    lineage.key("ks.lease")
}

/// The settings of the followed table in `bank` (0 or 1) of `lineage`.
pub fn live_settings_key(lineage: &Lineage, bank: u8) -> String {
    lineage.key(if bank == 0 {
        "ks.b0.settings"
    } else {
        "ks.b1.settings"
    })
}

/// Shard `index` of the followed table in `bank` of `lineage`.
pub fn shard_key(lineage: &Lineage, bank: u8, index: u32) -> String {
    let mut key = lineage.prefix(16);
    key.push_str(if bank == 0 { "ks.b0.s" } else { "ks.b1.s" });
    key.push_str(&format!("{index:x}"));
    key
}

/// The shared-data key of a key id's rate-limit buckets in `lineage`: two
/// configurations with a key of the same id never share a bucket.
pub fn buckets_key(lineage: &Lineage, id: &str) -> String {
    let mut key = lineage.prefix(3 + id.len());
    key.push_str("rl.");
    key.push_str(id);
    key
}

/// The fingerprints of `lineage`'s key ids whose bucket entries exist. Not
/// under `rl.`, where a key id could name it.
pub fn known_buckets_key(lineage: &Lineage) -> String {
    lineage.key("known_buckets")
}

/// The digest of the last configuration `lineage` refused.
pub fn last_refused_key(lineage: &Lineage) -> String {
    lineage.key("last_refused")
}

/// The circuit of the fleet's rate-limit service on Envoy cluster
/// `cluster`, shared by every configuration of the process.
pub fn circuit_key(cluster: &str) -> String {
    let mut key = String::with_capacity(ROOT.len() + 6 + cluster.len());
    key.push_str(ROOT);
    key.push_str("fleet.");
    key.push_str(cluster);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn names_are_spelt_as_the_readme_says() {
        let lineage = Lineage::of(b"apikey", b"apikey");
        let head = head_key(&lineage);
        let token = head
            .strip_prefix("apikey.v1.")
            .and_then(|rest| rest.strip_suffix(".head"))
            .unwrap_or_else(|| panic!("head named {head}"));
        assert_eq!(token.len(), 16, "lineage token in {head}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{head}");
        let under = |suffix: &str| format!("apikey.v1.{token}.{suffix}");
        assert_eq!(settings_key(&lineage, 0), under("b0.settings"));
        assert_eq!(settings_key(&lineage, 1), under("b1.settings"));
        let hash = KeyHash::of(b"k");
        assert_eq!(
            record_key(&lineage, 1, &hash),
            under(&format!("b1.{}", hash.to_hex()))
        );
        assert_eq!(buckets_key(&lineage, "key_1"), under("rl.key_1"));
        assert_eq!(known_buckets_key(&lineage), under("known_buckets"));
        assert_eq!(last_refused_key(&lineage), under("last_refused"));
        assert_eq!(circuit_key("ratelimit"), "apikey.v1.fleet.ratelimit");
        assert_eq!(live_head_key(&lineage), under("ks.head"));
        assert_eq!(live_lease_key(&lineage), under("ks.lease"));
        assert_eq!(live_settings_key(&lineage, 1), under("ks.b1.settings"));
        assert_eq!(shard_key(&lineage, 0, 0xbeef), under("ks.b0.sbeef"));
    }
}
