//! The table a configuration with `key_source` follows, in shared data:
//! once per Envoy process, written by one VM, read by every worker, and
//! changed in place, a shard at a time.
//!
//! A table delivered through ECDS is written whole by whichever worker
//! configures it first ([`crate::key_table`]); a followed table changes
//! with every key created or revoked, so rewriting it whole per change
//! would cost seconds at a million keys. Here:
//!
//! - one VM of the process holds the *lease* ([`lease`]) and alone talks to
//!   the key service and writes; the others only read;
//! - records live in *shards* ([`shard`]), a few records per shared-data
//!   entry chosen by the first bits of the key hash, in one of two banks;
//! - a complete snapshot is written into the bank that is not serving,
//!   under a new *build* number, and served from the moment the *head*
//!   names it; a shard of an older build reads as empty, so nothing of a
//!   previous table in that bank ever answers;
//! - a change rewrites only the shards of the keys it touches, in the bank
//!   serving, then the head, whose feed generation tells every worker on
//!   its next tick that its cached records are out of date;
//! - the settings (the configuration without keys) sit beside each bank
//!   with the head's `settings_version`, so a worker re-reads them only
//!   when they changed.
//!
//! Records carry no generation of their own here (theirs is 0): the
//! shard's build decides whether a record belongs to the table.

use crate::key_table::buckets::ensure_bucket_entries;
use crate::key_table::TableRef;
use crate::store::cursor::{Reader, Writer};
use crate::store::names::{head_key, live_head_key, live_settings_key, shard_key, Lineage};
use crate::store::{SharedStore, StoreError};

pub mod lease;
pub mod shard;

const HEAD_FORMAT: u8 = 1;
const SETTINGS_FORMAT: u8 = 1;

/// What the head says the workers serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveHead {
    /// The bank (0 or 1) holding the table.
    pub bank: u8,
    /// How many hash bits choose a shard.
    pub bits: u8,
    /// The table build: its shards carry it.
    pub build: u64,
    /// The feed generation the table is at.
    pub generation: u64,
    /// Changes when the settings do (the generation that stored them).
    pub settings_version: u64,
    /// How many keys the table holds.
    pub key_count: u64,
}

impl LiveHead {
    fn encode(&self) -> Vec<u8> {
        let mut out = Writer::with_capacity(44);
        out.u8(HEAD_FORMAT)
            .u8(self.bank)
            .u8(self.bits)
            .u64(self.build)
            .u64(self.generation)
            .u64(self.settings_version)
            .u64(self.key_count);
        out.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        (reader.u8()? == HEAD_FORMAT).then_some(())?;
        let head = Self {
            bank: reader.u8()?,
            bits: reader.u8()?,
            build: reader.u64()?,
            generation: reader.u64()?,
            settings_version: reader.u64()?,
            key_count: reader.u64()?,
        };
        (head.bank <= 1 && head.bits <= shard::MAX_BITS).then_some(head)
    }

    /// Where a worker serving this head reads its records.
    pub fn table(&self, lineage: Lineage) -> TableRef {
        TableRef {
            lineage,
            bank: self.bank,
            generation: self.build,
            shard_bits: Some(self.bits),
        }
    }
}

/// The head of `lineage`'s followed table; `None` before the first one.
pub fn read_head(
    store: &dyn SharedStore,
    lineage: &Lineage,
) -> Result<Option<LiveHead>, StoreError> {
    Ok(store
        .get(&live_head_key(lineage))?
        .and_then(|(bytes, _)| LiveHead::decode(&bytes)))
}

/// The settings (configuration text without keys) of the table `head`
/// names; `None` when the entry describes another version (written after
/// the head was read: read the head again).
pub fn read_settings(
    store: &dyn SharedStore,
    lineage: &Lineage,
    head: &LiveHead,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some((bytes, _)) = store.get(&live_settings_key(lineage, head.bank))? else {
        return Ok(None);
    };
    let mut reader = Reader::new(&bytes);
    let matches = reader.u8() == Some(SETTINGS_FORMAT)
        && reader.u64() == Some(head.build)
        && reader.u64() == Some(head.settings_version);
    Ok(matches.then(|| reader.rest().to_vec()))
}

fn write_settings(
    store: &dyn SharedStore,
    lineage: &Lineage,
    head: &LiveHead,
    settings: &[u8],
) -> Result<(), StoreError> {
    let mut out = Writer::with_capacity(17 + settings.len());
    out.u8(SETTINGS_FORMAT)
        .u64(head.build)
        .u64(head.settings_version)
        .bytes(settings);
    store.set(&live_settings_key(lineage, head.bank), &out.finish(), 0)
}

/// The record bytes of `hash` in `table` (a followed table); `None` when
/// absent.
pub fn lookup(
    store: &dyn SharedStore,
    table: &TableRef,
    bits: u8,
    hash: &[u8; 32],
) -> Result<Option<Vec<u8>>, StoreError> {
    let name = shard_key(&table.lineage, table.bank, shard::index_of(hash, bits));
    let Some((bytes, _)) = store.get(&name)? else {
        return Ok(None);
    };
    Ok(shard::find(&bytes, table.generation, hash).map(<[u8]>::to_vec))
}

/// A table being assembled in the VM before it is written: one buffer of
/// entries per shard.
#[derive(Debug, Default)]
pub struct ShardSet {
    bits: u8,
    shards: Vec<Vec<u8>>,
    keys: u64,
    /// Records expected per shard: a shard's buffer is sized for them on
    /// its first record (grown by doubling, a million keys' buffers held
    /// a third more than they used; Wasm memory never shrinks).
    per_shard: usize,
}

impl ShardSet {
    /// An empty set sized for about `expected_keys` keys.
    pub fn for_keys(expected_keys: u64) -> Self {
        let bits = shard::bits_for(expected_keys);
        let per_shard = usize::try_from(expected_keys >> bits).unwrap_or(0) + 1;
        Self {
            bits,
            shards: vec![Vec::new(); 1usize << bits],
            keys: 0,
            per_shard,
        }
    }

    /// Adds the record of a key whose hash is not in the set yet.
    pub fn push(&mut self, hash: &[u8; 32], record: &[u8]) {
        let index = shard::index_of(hash, self.bits) as usize;
        if let Some(body) = self.shards.get_mut(index) {
            if body.capacity() == 0 {
                // A quarter more than the average, for the shards above it.
                body.reserve((35 + record.len()) * (self.per_shard + self.per_shard / 4 + 1));
            }
            shard::push(body, hash, record);
            self.keys += 1;
        }
    }

    /// Replaces (or with `None` removes) the record of `hash`.
    pub fn upsert(&mut self, hash: &[u8; 32], record: Option<&[u8]>) {
        let index = shard::index_of(hash, self.bits) as usize;
        if let Some(body) = self.shards.get_mut(index) {
            let (updated, change) = shard::upsert_body(body, hash, record);
            *body = updated;
            self.keys = self.keys.saturating_add_signed(change);
        }
    }

    /// How many records the set holds.
    pub fn len(&self) -> u64 {
        self.keys
    }

    /// Whether the set holds no record.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }
}

/// A complete, verified table to serve.
#[derive(Debug)]
pub struct NewTable {
    /// Its records.
    pub shards: ShardSet,
    /// The configuration text without keys.
    pub settings: Vec<u8>,
    /// The feed generation it is at.
    pub generation: u64,
    /// The ids of its keys with limits (their buckets must exist).
    pub limited: Vec<String>,
    /// When its first page was asked for (monotonic ns), for the log.
    pub began_ns: u64,
}

/// Verified changes to the table serving.
#[derive(Debug, Default)]
pub struct Changes {
    /// New settings, when they changed.
    pub settings: Option<Vec<u8>>,
    /// Each changed key's record by hash; `None` removes it.
    pub records: Vec<([u8; 32], Option<Vec<u8>>)>,
    /// The ids of changed keys with limits.
    pub limited: Vec<String>,
    /// The feed generation the table is at after them.
    pub generation: u64,
    /// How many keys the table holds after them.
    pub key_count: u64,
}

/// Writes `table` into the bank not serving and makes the head name it.
/// The caller holds the lease ([`lease`]); `still_writer` is asked now and
/// then during a long write, and a write whose lease was lost stops
/// (`Ok(None)`) before the head changes.
pub fn publish_table(
    store: &dyn SharedStore,
    lineage: &Lineage,
    table: &NewTable,
    now_ns: u64,
    still_writer: &dyn Fn() -> Result<bool, StoreError>,
) -> Result<Option<LiveHead>, StoreError> {
    let current = read_head(store, lineage)?;
    let first_table = current.is_none() && store.get(&head_key(lineage))?.is_none();
    let limited = table.limited.iter().map(String::as_str);
    if !ensure_bucket_entries(store, lineage, limited, first_table, still_writer)? {
        return Ok(None);
    }
    let head = LiveHead {
        bank: current.map_or(0, |head| 1 - head.bank),
        bits: table.shards.bits,
        // Builds only grow, so a shard left in this bank by any earlier
        // build never reads as this one's: the steady clock never goes
        // back, and lives exactly as long as shared data (the process).
        build: now_ns.max(current.map_or(0, |head| head.build.saturating_add(1))),
        generation: table.generation,
        settings_version: table.generation,
        key_count: table.shards.len(),
    };
    for (index, body) in table.shards.shards.iter().enumerate() {
        if index % 4096 == 4095 && !still_writer()? {
            return Ok(None);
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        store.set(
            &shard_key(lineage, head.bank, index),
            &shard::framed(head.build, body),
            0,
        )?;
    }
    write_settings(store, lineage, &head, &table.settings)?;
    if !still_writer()? {
        return Ok(None);
    }
    store.set(&live_head_key(lineage), &head.encode(), 0)?;
    Ok(Some(head))
}

/// Applies `changes` to the table `head` names (written by this writer),
/// shard by shard, then moves the head to their generation.
pub fn apply_changes(
    store: &dyn SharedStore,
    lineage: &Lineage,
    head: &LiveHead,
    changes: &Changes,
) -> Result<LiveHead, StoreError> {
    for id in &changes.limited {
        let entry = crate::store::names::buckets_key(lineage, id);
        if store.get(&entry)?.is_none() {
            store.set(&entry, crate::bucket_store::EMPTY_BUCKETS, 0)?;
        }
    }
    for (hash, record) in &changes.records {
        let name = shard_key(lineage, head.bank, shard::index_of(hash, head.bits));
        let current = store
            .get(&name)?
            .map(|(bytes, _)| bytes)
            .unwrap_or_default();
        let updated = shard::upsert(&current, head.build, hash, record.as_deref());
        store.set(&name, &updated, 0)?;
    }
    let mut next = LiveHead {
        generation: changes.generation,
        key_count: changes.key_count,
        ..*head
    };
    if let Some(settings) = &changes.settings {
        next.settings_version = changes.generation;
        write_settings(store, lineage, &next, settings)?;
    }
    store.set(&live_head_key(lineage), &next.encode(), 0)?;
    Ok(next)
}

#[cfg(test)]
mod tests;
