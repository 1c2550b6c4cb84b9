//! One shard of a followed table: the records of every key whose hash
//! falls in it, in one shared-data entry.
//!
//! Writing one entry per key cost one host call per key, the main cost of
//! loading a large table (6.6 s at 1,000,000 keys through ECDS). A shard
//! holds about [`TARGET_PER_SHARD`] records, so a table of a million keys
//! is some 65,000 writes, and a change rewrites only the shards of the keys
//! it touches. A look-up reads one shard, a few kilobytes at any table
//! size (the shard count grows with the table), and finds its record by
//! comparing 32-byte hashes.
//!
//! Format: `[FORMAT][build: u64][entries: (hash: [u8; 32], record: LEB128
//! length + bytes)*]`. `build` names the table build the shard belongs
//! to: a shard left by an older build of the same bank reads as empty.

use crate::store::cursor::{Reader, Writer};

const FORMAT: u8 = 1;
/// The header's size: format and build.
const HEADER: usize = 9;

/// About how many records a shard holds: lookups copy one shard into the
/// VM, so it stays small, while the number of entries (one host call each
/// to write) stays about a sixteenth of the number of keys.
pub const TARGET_PER_SHARD: u64 = 16;
/// The most shards a table has (2^20): beyond about 16 million keys,
/// shards grow instead.
pub const MAX_BITS: u8 = 20;

/// How many bits of a key hash choose its shard for a table of `keys`.
pub fn bits_for(keys: u64) -> u8 {
    let shards = keys.div_ceil(TARGET_PER_SHARD).max(1);
    let bits = u64::BITS - (shards - 1).leading_zeros();
    u8::try_from(bits).unwrap_or(MAX_BITS).min(MAX_BITS)
}

/// The shard of `hash` in a table of `bits` bits: its first bits.
pub fn index_of(hash: &[u8; 32], bits: u8) -> u32 {
    let prefix = hash
        .first_chunk::<4>()
        .map_or(0, |bytes| u32::from_be_bytes(*bytes));
    if bits == 0 {
        0
    } else {
        prefix >> (32 - u32::from(bits.min(MAX_BITS)))
    }
}

/// The build a shard belongs to; `None` when it is not a shard.
pub fn build_of(shard: &[u8]) -> Option<u64> {
    let mut reader = Reader::new(shard);
    (reader.u8()? == FORMAT).then_some(())?;
    reader.u64()
}

/// The entries after a shard's header (its *body*) when it belongs to
/// `build`; an empty body otherwise.
fn body_of(shard: &[u8], build: u64) -> &[u8] {
    if build_of(shard) == Some(build) {
        shard.get(HEADER..).unwrap_or_default()
    } else {
        &[]
    }
}

/// The `(hash, record)` entries of a body, until the first malformed one.
fn entries(body: &[u8]) -> impl Iterator<Item = ([u8; 32], &[u8])> + '_ {
    let mut reader = Reader::new(body);
    core::iter::from_fn(move || Some((reader.array::<32>()?, reader.prefixed()?)))
}

/// The record of `hash` in `shard` of `build`; `None` when absent or when
/// the shard belongs to another build.
pub fn find<'a>(shard: &'a [u8], build: u64, hash: &[u8; 32]) -> Option<&'a [u8]> {
    entries(body_of(shard, build))
        .find(|(entry, _)| entry == hash)
        .map(|(_, record)| record)
}

/// Appends `record` for `hash` to `body`, which does not hold it.
pub fn push(body: &mut Vec<u8>, hash: &[u8; 32], record: &[u8]) {
    let mut out = Writer::with_capacity(32 + 3 + record.len());
    out.bytes(hash).prefixed(record);
    body.extend_from_slice(&out.finish());
}

/// `body` with `hash`'s entry replaced by `record` (added when absent;
/// removed when `record` is `None`), and the change in its record count.
pub fn upsert_body(body: &[u8], hash: &[u8; 32], record: Option<&[u8]>) -> (Vec<u8>, i64) {
    let mut out = Vec::with_capacity(body.len() + record.map_or(0, |r| r.len() + 35));
    let mut removed = 0;
    for (entry, existing) in entries(body) {
        if entry == *hash {
            removed = 1;
        } else {
            push(&mut out, &entry, existing);
        }
    }
    if let Some(record) = record {
        push(&mut out, hash, record);
    }
    (out, i64::from(record.is_some()) - removed)
}

/// A whole shard of `build` around `body`.
pub fn framed(build: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Writer::with_capacity(HEADER + body.len());
    out.u8(FORMAT).u64(build).bytes(body);
    out.finish()
}

/// `shard` with `hash`'s entry replaced by `record` (removed when `None`),
/// for `build`: a shard of another build starts empty.
pub fn upsert(shard: &[u8], build: u64, hash: &[u8; 32], record: Option<&[u8]>) -> Vec<u8> {
    framed(build, &upsert_body(body_of(shard, build), hash, record).0)
}

/// How many records `shard` of `build` holds.
pub fn len(shard: &[u8], build: u64) -> usize {
    entries(body_of(shard, build)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn hash(n: u8) -> [u8; 32] {
        let mut hash = [n; 32];
        hash[0] = n.wrapping_mul(37);
        hash
    }

    #[test]
    fn bits_grow_with_the_table_and_stay_bounded() {
        assert_eq!(bits_for(0), 0);
        assert_eq!(bits_for(16), 0);
        assert_eq!(bits_for(17), 1);
        assert_eq!(bits_for(1_000_000), 16, "1M keys: 65,536 shards of ~15");
        assert_eq!(bits_for(u64::MAX), MAX_BITS);
    }

    #[test]
    fn a_hash_falls_in_the_shard_of_its_first_bits() {
        let mut hash = [0u8; 32];
        hash[0] = 0b1010_0000;
        assert_eq!(index_of(&hash, 0), 0);
        assert_eq!(index_of(&hash, 1), 1);
        assert_eq!(index_of(&hash, 3), 0b101);
        assert!(index_of(&[0xff; 32], MAX_BITS) < 1 << MAX_BITS);
    }

    #[test]
    fn records_are_found_replaced_and_removed() {
        let mut body = Vec::new();
        push(&mut body, &hash(1), b"one");
        push(&mut body, &hash(2), b"two");
        let shard = framed(7, &body);
        assert_eq!(find(&shard, 7, &hash(2)), Some(&b"two"[..]));
        let shard = upsert(&shard, 7, &hash(1), Some(b"uno"));
        assert_eq!(find(&shard, 7, &hash(1)), Some(&b"uno"[..]));
        assert_eq!(len(&shard, 7), 2, "a replaced record was duplicated");
        let shard = upsert(&shard, 7, &hash(2), None);
        assert_eq!(find(&shard, 7, &hash(2)), None, "a removed record answered");
        assert_eq!(find(&shard, 7, &hash(1)), Some(&b"uno"[..]));
    }

    #[test]
    fn upserting_a_body_reports_the_change_in_records() {
        let (body, added) = upsert_body(&[], &hash(1), Some(b"one"));
        assert_eq!(added, 1);
        let (body, replaced) = upsert_body(&body, &hash(1), Some(b"uno"));
        assert_eq!(replaced, 0, "a replacement counted as a new record");
        let (_, removed) = upsert_body(&body, &hash(1), None);
        assert_eq!(removed, -1);
        let (_, absent) = upsert_body(&body, &hash(2), None);
        assert_eq!(absent, 0, "removing an absent record changed the count");
    }

    #[test]
    fn a_shard_of_another_build_reads_as_empty() {
        let mut body = Vec::new();
        push(&mut body, &hash(1), b"one");
        let shard = framed(7, &body);
        assert_eq!(find(&shard, 8, &hash(1)), None, "a stale shard answered");
        let rebuilt = upsert(&shard, 8, &hash(2), Some(b"two"));
        assert_eq!(find(&rebuilt, 8, &hash(1)), None, "a stale record survived");
        assert_eq!(find(&rebuilt, 8, &hash(2)), Some(&b"two"[..]));
    }

    #[test]
    fn a_malformed_shard_answers_nothing_and_never_panics() {
        let mut body = Vec::new();
        push(&mut body, &hash(1), b"one");
        let shard = framed(7, &body);
        for cut in 0..shard.len() {
            let cut = &shard[..cut];
            assert_eq!(find(cut, 7, &hash(1)), None, "a cut shard answered");
        }
    }
}
