//! The key table in shared data: once per Envoy process, not per worker.
//!
//! proxy-wasm shared data is a process-wide map with compare-and-swap, but
//! no delete, and a CAS on a key that does not exist yet always succeeds.
//! It is keyed by `vm_id` only, so every filter configuration of the
//! process that shares a `vm_id` shares it too (contract §7.1: each must
//! still be enforced as if alone). Every entry of a configuration is
//! therefore named under its [`Lineage`]: the filter instance (the Wasm
//! plugin's `name` and `root_id`) across all its updates (every name is
//! built in [`crate::store::names`]).
//!
//! Within a lineage the table lives in two fixed *banks* of records keyed
//! by key hash, plus one *head* entry saying which configuration (by
//! digest) each bank holds, under which generation, and whether it is
//! complete:
//!
//! - a worker configuring digest `D` that finds `D` complete in a bank uses
//!   it without writing anything (the same table is never rewritten);
//! - otherwise it claims the bank that is not serving the newest complete
//!   table by a CAS on the head, writes every record stamped with the new
//!   generation, creates the rate-limit entries of new keys, and marks the
//!   bank complete; a worker that finds `D` being written by another waits
//!   (the edge polls on its tick) and serves its previous table meanwhile;
//! - the writer renews its claim in the head as it goes (a heartbeat); a
//!   claim not renewed for [`STALE_CLAIM_NS`] (its writer trapped or was
//!   killed) is taken over by a waiting worker, so no worker serves a
//!   superseded table for long when a writer dies;
//! - beside each bank, a *settings* entry holds the configuration text with
//!   its `keys` emptied, so a worker that finds the table complete parses a
//!   few hundred bytes, not the whole configuration;
//! - a request reads one record; a record whose generation differs from the
//!   table it expects (a key removed or changed since) counts as absent, so
//!   a removed key never authenticates again. Generations are never reused
//!   (see [`publish`]), even when the head is lost.
//!
//! Storage stays bounded per lineage: two banks of one record per key hash
//! ever loaded, two settings entries, one rate-limit entry per key id, and
//! one list of the ids whose rate-limit entries exist, whatever the number
//! of updates.
//!
//! This file holds the protocol; its parts are in submodules: the
//! configuration's digest (`digest`), the head and its bank state machine
//! (`head`), the bank settings (`settings`), bucket pre-creation
//! (`buckets`) and the list of ids with bucket entries it keeps
//! (`known_ids`).

use crate::config::Config;
use crate::key_record;
use crate::store::names::settings_key;

pub(crate) mod buckets;
mod digest;
mod head;
mod known_ids;
mod settings;

pub use self::digest::{digest, Digest, Digester};
pub use crate::bucket_store::EMPTY_BUCKETS;
pub use crate::store::names::{buckets_key, record_key, Lineage};
pub use crate::store::{SharedStore, StoreError};

use self::head::{claim, ready_in, Claim, Claimed};
use self::settings::{decode_settings, encode_settings};

/// Which lineage, bank and generation a worker reads its records from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// The filter instance whose table this is.
    pub lineage: Lineage,
    /// 0 or 1.
    pub bank: u8,
    /// The generation stamped on this table's records; for a followed
    /// table ([`crate::live_table`]), the build its shards carry.
    pub generation: u64,
    /// `Some(bits)` for a followed table, whose records live in shards
    /// chosen by `bits` bits of the key hash; `None` for one record per
    /// entry.
    pub shard_bits: Option<u8>,
}

/// The result of publishing a configuration's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publication {
    /// This call wrote the table; it is complete and can serve requests.
    Written(TableRef),
    /// Another worker had written the table; it can serve requests.
    Ready(TableRef),
    /// Another worker is writing this table; ask again later.
    Pending,
}

/// A complete table found in shared data, with what a worker needs besides
/// its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyTable {
    /// Where its records are.
    pub table: TableRef,
    /// How many keys it holds.
    pub key_count: usize,
    /// The configuration text with its `keys` emptied
    /// ([`Config::parse_with_settings`]).
    pub settings: Vec<u8>,
}

/// A claim not renewed for this long is presumed abandoned (its writer
/// trapped or was killed) and is taken over by a worker waiting for the
/// same table. A live writer renews it every [`RECHECK_EVERY`] records, a
/// few milliseconds apart; the bound keeps a table whose writer died from
/// leaving workers on the superseded one for more than about a second
/// (contract §4) plus the time to write it.
pub const STALE_CLAIM_NS: u64 = 1_000_000_000;
/// How many records (or rate-limit entries) a writer writes between
/// renewals of its claim, which also check that it still stands.
const RECHECK_EVERY: usize = 1024;

/// The complete table of `lineage`'s configuration whose bytes hash to
/// `digest`, when some worker has already written it, with its settings. A
/// worker that finds one needs no key from the configuration: the same
/// bytes were fully validated by the worker that wrote it. `None` also when
/// the settings entry no longer describes that table (it was overwritten by
/// a newer publication in between): the caller then reads the
/// configuration itself.
pub fn ready_table(
    store: &dyn SharedStore,
    lineage: &Lineage,
    digest: &Digest,
) -> Result<Option<ReadyTable>, StoreError> {
    let Some(table) = ready_in(store, lineage, digest)? else {
        return Ok(None);
    };
    let Some((bytes, _)) = store.get(&settings_key(lineage, table.bank))? else {
        return Ok(None);
    };
    Ok(
        decode_settings(&bytes, digest, table.generation).map(|(key_count, settings)| ReadyTable {
            table,
            key_count,
            settings: settings.to_vec(),
        }),
    )
}

/// Makes the keys of `config` (whose bytes hash to `digest`) available to
/// every worker serving `lineage`, with its `settings`
/// ([`Config::parse_with_settings`]), writing them only when no worker has
/// yet. `now_ns` reads a monotonic clock shared by every worker (Envoy's
/// steady clock), to renew the claim and to recognise an abandoned one.
///
/// A new table's generation is at least the clock's reading, and above the
/// head's count: generations only ever grow, even when the head cannot be
/// read (a module with another head format shares the `vm_id` during an
/// upgrade) and the count restarts. Shared data lives exactly as long as
/// the process, and so does the steady clock's timeline, which never goes
/// back (unlike the wall clock); every generation issued before was at most
/// the clock's reading when it was issued, claims being more than a
/// nanosecond apart, so a record left in a bank by any earlier table never
/// carries a new table's generation.
pub fn publish(
    store: &dyn SharedStore,
    lineage: &Lineage,
    digest: &Digest,
    config: &Config,
    settings: &[u8],
    now_ns: &dyn Fn() -> u64,
) -> Result<Publication, StoreError> {
    let claim = match claim(store, lineage, digest, now_ns)? {
        Claimed::Found(publication) => return Ok(publication),
        Claimed::Held(claim) => claim,
    };
    if !write_records(store, config, &claim, now_ns)? {
        return Ok(Publication::Pending);
    }
    if !buckets::create_bucket_entries(store, config, &claim, now_ns)? {
        return Ok(Publication::Pending);
    }
    let entry = encode_settings(digest, claim.generation, config.keys.len(), settings);
    store.set(&settings_key(lineage, claim.table().bank), &entry, 0)?;
    claim.complete(store)
}

/// Writes every record; `false` when the claim was taken over meanwhile.
fn write_records(
    store: &dyn SharedStore,
    config: &Config,
    claim: &Claim<'_>,
    now_ns: &dyn Fn() -> u64,
) -> Result<bool, StoreError> {
    let table = claim.table();
    for (written, key) in config.keys.iter().enumerate() {
        if written % RECHECK_EVERY == RECHECK_EVERY - 1 && !claim.renew(store, now_ns())? {
            return Ok(false);
        }
        store.set(
            &record_key(&table.lineage, table.bank, &key.hash),
            &key_record::encode(key, &config.plans, table.generation),
            0,
        )?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
