//! Bucket pre-creation: the empty rate-limit entry of every limited key is
//! made by the table's writer, before the table serves, so nothing is ever
//! created on the request path (Envoy's CAS does not protect creation).

use super::head::Claim;
use super::known_ids::{encode_known, id_fingerprint, sort_fingerprints, KnownList};
use super::{StoreError, RECHECK_EVERY};
use crate::bucket_store::EMPTY_BUCKETS;
use crate::config::{Config, KeySpec};
use crate::store::names::{buckets_key, known_buckets_key, Lineage};
use crate::store::SharedStore;

/// Creates the (empty) bucket entry of every limited key that has none.
/// Only the claim holder does this, before the table is marked ready, so no
/// request can be taking tokens from an entry while it is created: the
/// race Envoy's CAS leaves open for new entries cannot arise.
///
/// Entries are never deleted, so the ids of a previous table's entries are
/// known to have one: the writer leaves their fingerprints in one sorted
/// list, and an update looks up only the entries of ids missing from it
/// (one host call for the list instead of one per key: over a second of a
/// 1,000,000-key reload). Every id in a list had its entry made before the
/// list was written, whoever wrote it last.
///
/// For a lineage's first table (no head existed before this claim) no
/// entry exists and none can be in use, so entries are written without a
/// look-up each (a second of a 1,000,000-key first load). That holds while
/// the claim stands: a writer that took it over could have its own table
/// serving, so the claim is renewed and rechecked as records are, and the
/// write stops (`false`) when it was lost. A writer stalled for more than
/// [`super::STALE_CLAIM_NS`] in the middle of a batch can still reset up to
/// `RECHECK_EVERY - 1` entries before it notices; that needs the stall, a
/// takeover completed meanwhile and requests on those keys, and costs at
/// most one fresh burst each, once.
pub(super) fn create_bucket_entries(
    store: &dyn SharedStore,
    config: &Config,
    claim: &Claim<'_>,
    now_ns: &dyn Fn() -> u64,
) -> Result<bool, StoreError> {
    let limited = config
        .keys
        .iter()
        .filter(|key| is_limited(key, config))
        .map(|key| key.id.as_str());
    ensure_bucket_entries(store, claim.lineage, limited, claim.first_table, &|| {
        claim.renew(store, now_ns())
    })
}

/// Makes sure every id of `limited` has a bucket entry in `lineage`, as
/// [`create_bucket_entries`] explains; `first_table` when no table of the
/// lineage ever served (no entry can exist). `still_writer` is asked every
/// [`RECHECK_EVERY`] entries; when it answers `false` the writer lost its
/// right to write and the work stops (`Ok(false)`).
pub(crate) fn ensure_bucket_entries<'a>(
    store: &dyn SharedStore,
    lineage: &Lineage,
    limited: impl Iterator<Item = &'a str>,
    first_table: bool,
    still_writer: &dyn Fn() -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    let known_key = known_buckets_key(lineage);
    let previous = store.get(&known_key)?.map(|(bytes, _)| bytes);
    let known = KnownList::decode(previous.as_deref().unwrap_or_default());
    let mut now_known = Vec::new();
    for (created, id) in limited.enumerate() {
        if created % RECHECK_EVERY == RECHECK_EVERY - 1 && !still_writer()? {
            return Ok(false);
        }
        let fingerprint = id_fingerprint(id);
        if !known.contains(&fingerprint) {
            let entry = buckets_key(lineage, id);
            if first_table || store.get(&entry)?.is_none() {
                store.set(&entry, EMPTY_BUCKETS, 0)?;
            }
        }
        now_known.push(fingerprint);
    }
    sort_fingerprints(&mut now_known);
    now_known.dedup();
    if !known.equals(&now_known) {
        store.set(&known_key, &encode_known(&now_known), 0)?;
    }
    Ok(true)
}

/// Whether `key` takes tokens from a bucket: it or its plan has limits.
pub(crate) fn is_limited(key: &KeySpec, config: &Config) -> bool {
    !key.rate_limits.is_empty()
        || config
            .plan(key.plan)
            .is_some_and(|plan| !plan.rate_limits.is_empty())
}
