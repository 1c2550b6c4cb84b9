//! The key table in shared data: once per Envoy process, not per worker.
//!
//! proxy-wasm shared data is a process-wide map with compare-and-swap, but
//! no delete, and a CAS on a key that does not exist yet always succeeds.
//! It is keyed by `vm_id` only, so every filter configuration of the
//! process that shares a `vm_id` shares it too (contract §7.1: each must
//! still be enforced as if alone). Every entry of a configuration is
//! therefore named under its [`Lineage`]: the filter instance (the Wasm
//! plugin's `name` and `root_id`) across all its updates.
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

    /// The shared-data key `apikey.v1.<token>.<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        let mut key = self.prefix(suffix.len());
        key.push_str(suffix);
        key
    }

    /// `apikey.v1.<token>.`, with room for `more` bytes.
    fn prefix(&self, more: usize) -> String {
        let mut key = String::with_capacity(27 + more);
        key.push_str("apikey.v1.");
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

/// Which lineage, bank and generation a worker reads its records from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// The filter instance whose table this is.
    pub lineage: Lineage,
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

const SETTINGS_VERSION: u8 = 1;
/// The fingerprints of the key ids whose rate-limit entries exist. Not
/// under `rl.`, where a key id could name it.
const KNOWN_BUCKETS: &str = "known_buckets";
const KNOWN_BUCKETS_VERSION: u8 = 1;
/// 2: claims carry the time their writer last renewed them.
const HEAD_VERSION: u8 = 2;
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
const MAX_ATTEMPTS: usize = 32;

fn head_key(lineage: &Lineage) -> String {
    lineage.key("head")
}

fn settings_key(lineage: &Lineage, bank: u8) -> String {
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

/// The shared-data key of a key id's rate-limit buckets in `lineage`: two
/// configurations with a key of the same id never share a bucket.
pub fn buckets_key(lineage: &Lineage, id: &str) -> String {
    let mut key = lineage.prefix(3 + id.len());
    key.push_str("rl.");
    key.push_str(id);
    key
}

/// The initial value of a bucket entry: no bucket used yet.
pub const EMPTY_BUCKETS: &[u8] = &[1];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum BankState {
    #[default]
    Empty,
    /// Claimed by the writer that claimed it at `started_ns` (which tells
    /// two writers of the same table apart), last renewed at `renewed_ns`.
    Writing {
        started_ns: u64,
        renewed_ns: u64,
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
            let renewed_ns = take_u64(&mut rest)?;
            bank.state = match state {
                0 => BankState::Empty,
                1 => BankState::Writing {
                    started_ns,
                    renewed_ns,
                },
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
        let mut out = Vec::with_capacity(1 + 8 + 2 * 57);
        out.push(HEAD_VERSION);
        out.extend_from_slice(&self.next_generation.to_le_bytes());
        for bank in &self.banks {
            out.extend_from_slice(&bank.digest);
            out.extend_from_slice(&bank.generation.to_le_bytes());
            let (state, started_ns, renewed_ns) = match bank.state {
                BankState::Empty => (0, 0, 0),
                BankState::Writing {
                    started_ns,
                    renewed_ns,
                } => (1, started_ns, renewed_ns),
                BankState::Ready => (2, 0, 0),
            };
            out.push(state);
            out.extend_from_slice(&started_ns.to_le_bytes());
            out.extend_from_slice(&renewed_ns.to_le_bytes());
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

fn read_head(store: &dyn SharedStore, lineage: &Lineage) -> Result<(Head, u32), StoreError> {
    read_head_entry(store, lineage).map(|(head, cas, _)| (head, cas))
}

/// The head, its CAS token, and whether the entry exists at all (it does
/// once any table was ever claimed in this lineage).
fn read_head_entry(
    store: &dyn SharedStore,
    lineage: &Lineage,
) -> Result<(Head, u32, bool), StoreError> {
    match store.get(&head_key(lineage))? {
        // An unreadable head (another format) is treated as empty and
        // overwritten. The records it described stay in the banks, but the
        // generation floor of `publish` keeps them from ever matching a new
        // table.
        Some((bytes, cas)) => Ok((Head::decode(&bytes).unwrap_or_default(), cas, true)),
        None => Ok((Head::default(), 0, false)),
    }
}

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
    let (head, _) = read_head(store, lineage)?;
    let Some((index, bank)) = head
        .banks
        .iter()
        .enumerate()
        .find(|(_, bank)| bank.digest == *digest && bank.state == BankState::Ready)
    else {
        return Ok(None);
    };
    let table = table_ref(lineage, index, bank.generation);
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

/// A writer's hold on one bank of one lineage's head.
#[derive(Clone, Copy, Debug)]
struct Claim<'a> {
    lineage: &'a Lineage,
    index: usize,
    digest: Digest,
    generation: u64,
    /// When this writer claimed the bank: its identity among the writers
    /// of the same table (a takeover keeps digest and generation).
    started_ns: u64,
}

impl Claim<'_> {
    fn table(&self) -> TableRef {
        table_ref(self.lineage, self.index, self.generation)
    }

    fn is_held_in(&self, bank: &Bank) -> bool {
        bank.digest == self.digest
            && bank.generation == self.generation
            && matches!(bank.state, BankState::Writing { started_ns, .. } if started_ns == self.started_ns)
    }

    /// Renews the claim in the head with the time `now_ns` (the heartbeat
    /// that keeps waiting workers from taking it over); `false` when it
    /// was taken over or superseded meanwhile.
    fn renew(&self, store: &dyn SharedStore, now_ns: u64) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut head, cas) = read_head(store, self.lineage)?;
            let Some(bank) = head.banks.get_mut(self.index) else {
                return Ok(false);
            };
            if !self.is_held_in(bank) {
                return Ok(false);
            }
            bank.state = BankState::Writing {
                started_ns: self.started_ns,
                renewed_ns: now_ns,
            };
            match store.set(&head_key(self.lineage), &head.encode(), cas) {
                Ok(()) => return Ok(true),
                Err(StoreError::CasMismatch) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::Contention)
    }
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
    for _ in 0..MAX_ATTEMPTS {
        let now = now_ns();
        let (mut head, cas, head_exists) = read_head_entry(store, lineage)?;
        let mut abandoned = None;
        for (index, bank) in head.banks.iter().enumerate() {
            if bank.digest != *digest {
                continue;
            }
            match bank.state {
                BankState::Ready => {
                    return Ok(Publication::Ready(table_ref(
                        lineage,
                        index,
                        bank.generation,
                    )))
                }
                BankState::Writing { renewed_ns, .. }
                    if now.saturating_sub(renewed_ns) < STALE_CLAIM_NS =>
                {
                    return Ok(Publication::Pending)
                }
                BankState::Writing { .. } => abandoned = Some((index, bank.generation)),
                BankState::Empty => {}
            }
        }
        // An abandoned claim is continued under its own generation: every
        // record of that generation in that bank is this configuration's,
        // so whatever its first writer still writes, should it be alive
        // after all, is what the new writer writes too.
        let (index, generation) = abandoned.unwrap_or_else(|| {
            let generation = head.next_generation.max(now).max(1);
            head.next_generation = generation.saturating_add(1);
            (head.bank_to_claim(), generation)
        });
        let claim = Claim {
            lineage,
            index,
            digest: *digest,
            generation,
            started_ns: now,
        };
        if let Some(bank) = head.banks.get_mut(index) {
            *bank = Bank {
                digest: *digest,
                generation,
                state: BankState::Writing {
                    started_ns: now,
                    renewed_ns: now,
                },
            };
        }
        match store.set(&head_key(lineage), &head.encode(), cas) {
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
            Ok(()) => {}
        }
        if !write_records(store, config, &claim, now_ns)? {
            return Ok(Publication::Pending);
        }
        // No head before this claim: the lineage never had a table.
        let first_table = !head_exists;
        if !create_bucket_entries(store, config, &claim, first_table, now_ns)? {
            return Ok(Publication::Pending);
        }
        let entry = encode_settings(digest, generation, config.keys.len(), settings);
        store.set(&settings_key(lineage, claim.table().bank), &entry, 0)?;
        return mark_written(store, &claim);
    }
    Err(StoreError::Contention)
}

fn table_ref(lineage: &Lineage, index: usize, generation: u64) -> TableRef {
    TableRef {
        lineage: *lineage,
        bank: u8::from(index != 0),
        generation,
    }
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
/// For a lineage's `first_table` (no head existed before this claim) no
/// entry exists and none can be in use, so entries are written without a
/// look-up each (a second of a 1,000,000-key first load). That holds while
/// the claim stands: a writer that took it over could have its own table
/// serving, so the claim is renewed and rechecked as records are, and the
/// write stops (`false`) when it was lost. A writer stalled for more than
/// [`STALE_CLAIM_NS`] in the middle of a batch can still reset up to
/// `RECHECK_EVERY - 1` entries before it notices; that needs the stall, a
/// takeover completed meanwhile and requests on those keys, and costs at
/// most one fresh burst each, once.
fn create_bucket_entries(
    store: &dyn SharedStore,
    config: &Config,
    claim: &Claim<'_>,
    first_table: bool,
    now_ns: &dyn Fn() -> u64,
) -> Result<bool, StoreError> {
    let lineage = claim.lineage;
    let known_key = lineage.key(KNOWN_BUCKETS);
    let previous = store.get(&known_key)?.map(|(bytes, _)| bytes);
    let known = KnownList::decode(previous.as_deref().unwrap_or_default());
    let mut now_known = Vec::with_capacity(config.keys.len());
    let limited = config.keys.iter().filter(|key| is_limited(key, config));
    for (created, key) in limited.enumerate() {
        if created % RECHECK_EVERY == RECHECK_EVERY - 1 && !claim.renew(store, now_ns())? {
            return Ok(false);
        }
        let fingerprint = id_fingerprint(&key.id);
        if !known.contains(&fingerprint) {
            let entry = buckets_key(lineage, &key.id);
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

/// Marks the claimed bank complete. `Pending` when the claim was lost;
/// `Ready` when it was lost to a writer that completed the same table.
fn mark_written(store: &dyn SharedStore, claim: &Claim<'_>) -> Result<Publication, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let (mut head, cas) = read_head(store, claim.lineage)?;
        let Some(bank) = head.banks.get_mut(claim.index) else {
            break;
        };
        if !claim.is_held_in(bank) {
            let completed = bank.digest == claim.digest
                && bank.generation == claim.generation
                && bank.state == BankState::Ready;
            return Ok(if completed {
                Publication::Ready(claim.table())
            } else {
                Publication::Pending
            });
        }
        bank.state = BankState::Ready;
        match store.set(&head_key(claim.lineage), &head.encode(), cas) {
            Ok(()) => return Ok(Publication::Written(claim.table())),
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Contention)
}

#[cfg(test)]
mod tests;
