//! The key table in shared data: once per Envoy process, not per worker.
//!
//! proxy-wasm shared data is a process-wide map with compare-and-swap, but
//! no delete, and a CAS on a key that does not exist yet always succeeds.
//! The table therefore lives in two fixed *banks* of records keyed by key
//! hash, plus one *head* entry saying which configuration (by digest) each
//! bank holds, under which generation, and whether it is complete:
//!
//! - a worker configuring digest `D` that finds `D` complete in a bank uses
//!   it without writing anything (the same table is never rewritten);
//! - otherwise it claims the bank that is not serving the newest complete
//!   table by a CAS on the head, writes every record stamped with the new
//!   generation, creates the rate-limit entries of new keys, and marks the
//!   bank complete; a worker that finds `D` being written by another waits
//!   (the edge polls on its tick) and serves its previous table meanwhile;
//! - beside each bank, a *settings* entry holds the configuration text with
//!   its `keys` emptied, so a worker that finds the table complete parses a
//!   few hundred bytes, not the whole configuration;
//! - a request reads one record; a record whose generation differs from the
//!   table it expects (a key removed or changed since) counts as absent, so
//!   a removed key never authenticates again.
//!
//! Storage stays bounded: two banks of one record per key hash ever loaded,
//! two settings entries, one rate-limit entry per key id, and one list of
//! the ids whose rate-limit entries exist, whatever the number of updates.

use crate::config::{Config, KeySpec};
use crate::key_hash::KeyHash;
use crate::key_record;

/// The shared-data operations the table needs.
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
    /// Too many CAS conflicts in a row.
    Contention,
}

/// Which bank and generation a worker reads its records from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// 0 or 1.
    pub bank: u8,
    /// The generation stamped on this table's records.
    pub generation: u64,
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

/// The BLAKE3 hash of a configuration's bytes, naming its table.
///
/// Every root context hashes its whole configuration (160 MB with
/// 1,000,000 keys) before it knows whether the table is already written,
/// several times per reload across the main thread and the workers. BLAKE3
/// is a cryptographic hash, as SHA-256 is, at twice its speed in Envoy's
/// V8 (0.23 s instead of 0.47 s for 160 MB); key hashes stay SHA-256, as
/// the contract says.
pub type Digest = [u8; 32];

/// Computes a configuration's [`Digest`] from its bytes piece by piece, so
/// a worker can name a large configuration without holding all of it.
#[derive(Clone, Default)]
pub struct Digester {
    hasher: blake3::Hasher,
}

impl Digester {
    /// Adds the next piece of the configuration.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        *self.hasher.finalize().as_bytes()
    }
}

/// The digest of a whole configuration.
pub fn digest(text: &[u8]) -> Digest {
    let mut digester = Digester::default();
    digester.update(text);
    digester.finish()
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

const HEAD_KEY: &str = "apikey.v1.head";
const SETTINGS_KEYS: [&str; 2] = ["apikey.v1.b0.settings", "apikey.v1.b1.settings"];
const SETTINGS_VERSION: u8 = 1;
/// The fingerprints of the key ids whose rate-limit entries exist. Not
/// under `apikey.v1.rl.`, where a key id could name it.
const KNOWN_BUCKETS_KEY: &str = "apikey.v1.known_buckets";
const KNOWN_BUCKETS_VERSION: u8 = 1;
const HEAD_VERSION: u8 = 1;
/// A claim older than this is presumed abandoned (its writer trapped).
const STALE_CLAIM_NS: u64 = 60_000_000_000;
/// How many records a writer writes between checks that its claim stands.
const RECHECK_EVERY: usize = 1024;
const MAX_ATTEMPTS: usize = 32;

/// The shared-data key of a record in `bank`.
pub fn record_key(bank: u8, hash: &KeyHash) -> String {
    let mut key = String::with_capacity(80);
    key.push_str("apikey.v1.b");
    key.push(if bank == 0 { '0' } else { '1' });
    key.push('.');
    hash.push_hex(&mut key);
    key
}

/// The shared-data key of a key id's rate-limit buckets.
pub fn buckets_key(id: &str) -> String {
    format!("apikey.v1.rl.{id}")
}

/// The initial value of a bucket entry: no bucket used yet.
pub const EMPTY_BUCKETS: &[u8] = &[1];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum BankState {
    #[default]
    Empty,
    Writing {
        started_ns: u64,
    },
    Ready,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bank {
    digest: Digest,
    generation: u64,
    state: BankState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Head {
    next_generation: u64,
    banks: [Bank; 2],
}

impl Head {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != HEAD_VERSION {
            return None;
        }
        let take_u64 = |rest: &mut &[u8]| {
            let (value, tail) = rest.split_first_chunk::<8>()?;
            *rest = tail;
            Some(u64::from_le_bytes(*value))
        };
        let next_generation = take_u64(&mut rest)?;
        let mut banks = [Bank::default(); 2];
        for bank in &mut banks {
            let (digest, tail) = rest.split_first_chunk::<32>()?;
            rest = tail;
            bank.digest = *digest;
            bank.generation = take_u64(&mut rest)?;
            let (&state, tail) = rest.split_first()?;
            rest = tail;
            let started_ns = take_u64(&mut rest)?;
            bank.state = match state {
                0 => BankState::Empty,
                1 => BankState::Writing { started_ns },
                2 => BankState::Ready,
                _ => return None,
            };
        }
        rest.is_empty().then_some(Self {
            next_generation,
            banks,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 2 * 49);
        out.push(HEAD_VERSION);
        out.extend_from_slice(&self.next_generation.to_le_bytes());
        for bank in &self.banks {
            out.extend_from_slice(&bank.digest);
            out.extend_from_slice(&bank.generation.to_le_bytes());
            let (state, started_ns) = match bank.state {
                BankState::Empty => (0, 0),
                BankState::Writing { started_ns } => (1, started_ns),
                BankState::Ready => (2, 0),
            };
            out.push(state);
            out.extend_from_slice(&started_ns.to_le_bytes());
        }
        out
    }

    /// The bank to overwrite for a new table: one being written for another
    /// configuration (it is superseded), else the older of the two, so the
    /// newest complete table keeps serving workers that have not switched.
    fn bank_to_claim(&self) -> usize {
        let [first, second] = &self.banks;
        match (first.state, second.state) {
            (BankState::Writing { .. }, _) => 0,
            (_, BankState::Writing { .. }) => 1,
            _ if first.generation <= second.generation => 0,
            _ => 1,
        }
    }
}

fn read_head(store: &dyn SharedStore) -> Result<(Head, u32), StoreError> {
    read_head_entry(store).map(|(head, cas, _)| (head, cas))
}

/// The head, its CAS token, and whether the entry exists at all (it does
/// once any table was ever claimed in this process).
fn read_head_entry(store: &dyn SharedStore) -> Result<(Head, u32, bool), StoreError> {
    match store.get(HEAD_KEY)? {
        // An unreadable head (another format) is treated as empty and
        // overwritten: the records it described are unreachable anyway.
        Some((bytes, cas)) => Ok((Head::decode(&bytes).unwrap_or_default(), cas, true)),
        None => Ok((Head::default(), 0, false)),
    }
}

/// The complete table of the configuration whose bytes hash to `digest`,
/// when some worker has already written it, with its settings. A worker
/// that finds one needs no key from the configuration: the same bytes were
/// fully validated by the worker that wrote it. `None` also when the
/// settings entry no longer describes that table (it was overwritten by a
/// newer publication in between): the caller then reads the configuration
/// itself.
pub fn ready_table(
    store: &dyn SharedStore,
    digest: &Digest,
) -> Result<Option<ReadyTable>, StoreError> {
    let (head, _) = read_head(store)?;
    let Some((index, bank)) = head
        .banks
        .iter()
        .enumerate()
        .find(|(_, bank)| bank.digest == *digest && bank.state == BankState::Ready)
    else {
        return Ok(None);
    };
    let table = table_ref(index, bank.generation);
    let Some(settings_key) = SETTINGS_KEYS.get(index) else {
        return Ok(None);
    };
    let Some((bytes, _)) = store.get(settings_key)? else {
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

/// A bank's settings entry: the digest and generation it belongs to, the
/// key count, then the settings text.
fn encode_settings(digest: &Digest, generation: u64, key_count: usize, settings: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 32 + 16 + settings.len());
    out.push(SETTINGS_VERSION);
    out.extend_from_slice(digest);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(key_count as u64).to_le_bytes());
    out.extend_from_slice(settings);
    out
}

/// The key count and settings text of an entry written for exactly
/// (`digest`, `generation`).
fn decode_settings<'a>(
    bytes: &'a [u8],
    digest: &Digest,
    generation: u64,
) -> Option<(usize, &'a [u8])> {
    let (&version, rest) = bytes.split_first()?;
    let (stored_digest, rest) = rest.split_first_chunk::<32>()?;
    let (stored_generation, rest) = rest.split_first_chunk::<8>()?;
    let (key_count, settings) = rest.split_first_chunk::<8>()?;
    let matches = version == SETTINGS_VERSION
        && stored_digest == digest
        && u64::from_le_bytes(*stored_generation) == generation;
    let key_count = usize::try_from(u64::from_le_bytes(*key_count)).ok()?;
    matches.then_some((key_count, settings))
}

/// Makes the keys of `config` (whose bytes hash to `digest`) available to
/// every worker, with its `settings` ([`Config::parse_with_settings`]),
/// writing them only when no worker has yet. `now_ns` is a monotonic clock
/// reading, used to recognise an abandoned claim.
pub fn publish(
    store: &dyn SharedStore,
    digest: &Digest,
    config: &Config,
    settings: &[u8],
    now_ns: u64,
) -> Result<Publication, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let (mut head, cas, head_exists) = read_head_entry(store)?;
        for (index, bank) in head.banks.iter().enumerate() {
            if bank.digest != *digest {
                continue;
            }
            match bank.state {
                BankState::Ready => {
                    return Ok(Publication::Ready(table_ref(index, bank.generation)))
                }
                BankState::Writing { started_ns }
                    if now_ns.saturating_sub(started_ns) < STALE_CLAIM_NS =>
                {
                    return Ok(Publication::Pending)
                }
                _ => {}
            }
        }
        let index = head.bank_to_claim();
        let generation = head.next_generation.max(1);
        head.next_generation = generation.saturating_add(1);
        let claim = Bank {
            digest: *digest,
            generation,
            state: BankState::Writing { started_ns: now_ns },
        };
        if let Some(bank) = head.banks.get_mut(index) {
            *bank = claim;
        }
        match store.set(HEAD_KEY, &head.encode(), cas) {
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
            Ok(()) => {}
        }
        let table = table_ref(index, generation);
        if !write_records(store, config, table, &claim)? {
            return Ok(Publication::Pending);
        }
        // No head before this claim: the process never had a table.
        let first_table = !head_exists;
        if !create_bucket_entries(store, config, table.bank, &claim, first_table)? {
            return Ok(Publication::Pending);
        }
        if let Some(settings_key) = SETTINGS_KEYS.get(index) {
            let entry = encode_settings(digest, generation, config.keys.len(), settings);
            store.set(settings_key, &entry, 0)?;
        }
        return mark_written(store, index, &claim);
    }
    Err(StoreError::Contention)
}

fn table_ref(index: usize, generation: u64) -> TableRef {
    TableRef {
        bank: u8::from(index != 0),
        generation,
    }
}

/// Writes every record; `false` when the claim was taken over meanwhile.
fn write_records(
    store: &dyn SharedStore,
    config: &Config,
    table: TableRef,
    claim: &Bank,
) -> Result<bool, StoreError> {
    for (written, key) in config.keys.iter().enumerate() {
        if written % RECHECK_EVERY == RECHECK_EVERY - 1 && !claim_stands(store, table.bank, claim)?
        {
            return Ok(false);
        }
        store.set(
            &record_key(table.bank, &key.hash),
            &key_record::encode(key, &config.plans, table.generation),
            0,
        )?;
    }
    Ok(true)
}

fn claim_stands(store: &dyn SharedStore, bank: u8, claim: &Bank) -> Result<bool, StoreError> {
    let (head, _) = read_head(store)?;
    Ok(head.banks.get(usize::from(bank)) == Some(claim))
}

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
/// For a process's `first_table` (no head existed before this claim) no
/// entry exists and none can be in use, so entries are written without a
/// look-up each (a second of a 1,000,000-key first load). That holds while
/// the claim stands: a writer that took it over could have its own table
/// serving, so the claim is rechecked as records are, and the write stops
/// (`false`) when it was lost.
fn create_bucket_entries(
    store: &dyn SharedStore,
    config: &Config,
    bank: u8,
    claim: &Bank,
    first_table: bool,
) -> Result<bool, StoreError> {
    let previous = store.get(KNOWN_BUCKETS_KEY)?.map(|(bytes, _)| bytes);
    let known = KnownList::decode(previous.as_deref().unwrap_or_default());
    let mut now_known = Vec::with_capacity(config.keys.len());
    let limited = config.keys.iter().filter(|key| is_limited(key, config));
    for (created, key) in limited.enumerate() {
        if first_table
            && created % RECHECK_EVERY == RECHECK_EVERY - 1
            && !claim_stands(store, bank, claim)?
        {
            return Ok(false);
        }
        let fingerprint = id_fingerprint(&key.id);
        if !known.contains(&fingerprint) {
            let entry = buckets_key(&key.id);
            if first_table || store.get(&entry)?.is_none() {
                store.set(&entry, EMPTY_BUCKETS, 0)?;
            }
        }
        now_known.push(fingerprint);
    }
    sort_fingerprints(&mut now_known);
    now_known.dedup();
    if !known.equals(&now_known) {
        store.set(KNOWN_BUCKETS_KEY, &encode_known(&now_known), 0)?;
    }
    Ok(true)
}

/// A key id's 128-bit FNV-1a hash, big-endian so that byte order is
/// numeric order. Ids come from the trusted configuration; should two ever
/// share one, the newer id's entry would be missing and its requests
/// denied (`Missing`): never over-admitted.
fn id_fingerprint(id: &str) -> [u8; 16] {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = id.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u128::from(byte)).wrapping_mul(PRIME)
    });
    hash.to_be_bytes()
}

/// Sorts fingerprints by their bytes: a least-significant-digit radix
/// sort, one pass per byte. A few lines here instead of the standard
/// library's sort, whose instantiation for 16-byte arrays added 26 KB to
/// the module; linear time too.
fn sort_fingerprints(fingerprints: &mut Vec<[u8; 16]>) {
    let mut scratch = vec![[0u8; 16]; fingerprints.len()];
    for position in (0..16).rev() {
        let digit =
            |fingerprint: &[u8; 16]| usize::from(fingerprint.get(position).copied().unwrap_or(0));
        let mut starts = [0usize; 256];
        for fingerprint in fingerprints.iter() {
            if let Some(count) = starts.get_mut(digit(fingerprint)) {
                *count += 1;
            }
        }
        let mut next = 0;
        for start in &mut starts {
            let count = *start;
            *start = next;
            next += count;
        }
        for fingerprint in fingerprints.iter() {
            if let Some(start) = starts.get_mut(digit(fingerprint)) {
                if let Some(slot) = scratch.get_mut(*start) {
                    *slot = *fingerprint;
                }
                *start += 1;
            }
        }
        core::mem::swap(fingerprints, &mut scratch);
    }
}

fn encode_known(fingerprints: &[[u8; 16]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 16 * fingerprints.len());
    out.push(KNOWN_BUCKETS_VERSION);
    for fingerprint in fingerprints {
        out.extend_from_slice(fingerprint);
    }
    out
}

/// A sorted list of fingerprints, read in place from its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KnownList<'a>(&'a [u8]);

impl<'a> KnownList<'a> {
    /// The list in `bytes`; empty (nothing known) when it is of another
    /// format or not sorted.
    fn decode(bytes: &'a [u8]) -> Self {
        let list = match bytes.split_first() {
            Some((&KNOWN_BUCKETS_VERSION, list)) if list.len() % 16 == 0 => Self(list),
            _ => return Self(&[]),
        };
        let sorted = (1..list.len()).all(|index| list.at(index - 1) < list.at(index));
        if sorted {
            list
        } else {
            Self(&[])
        }
    }

    fn len(self) -> usize {
        self.0.len() / 16
    }

    fn at(self, index: usize) -> Option<&'a [u8]> {
        self.0.get(index * 16..index * 16 + 16)
    }

    fn contains(self, fingerprint: &[u8; 16]) -> bool {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self
                .at(middle)
                .map(|entry| entry.cmp(fingerprint.as_slice()))
            {
                Some(core::cmp::Ordering::Less) => low = middle + 1,
                Some(core::cmp::Ordering::Greater) => high = middle,
                _ => return true,
            }
        }
        false
    }

    fn equals(self, fingerprints: &[[u8; 16]]) -> bool {
        self.len() == fingerprints.len()
            && fingerprints
                .iter()
                .enumerate()
                .all(|(index, fingerprint)| self.at(index) == Some(fingerprint.as_slice()))
    }
}

fn is_limited(key: &KeySpec, config: &Config) -> bool {
    !key.rate_limits.is_empty()
        || config
            .plan(key.plan)
            .is_some_and(|plan| !plan.rate_limits.is_empty())
}

fn mark_written(
    store: &dyn SharedStore,
    index: usize,
    claim: &Bank,
) -> Result<Publication, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let (mut head, cas) = read_head(store)?;
        let Some(bank) = head.banks.get_mut(index) else {
            break;
        };
        if *bank != *claim {
            return Ok(Publication::Pending);
        }
        bank.state = BankState::Ready;
        match store.set(HEAD_KEY, &head.encode(), cas) {
            Ok(()) => return Ok(Publication::Written(table_ref(index, claim.generation))),
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Contention)
}

#[cfg(test)]
mod tests;
