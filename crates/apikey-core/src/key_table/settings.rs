//! A bank's settings entry: the configuration of the table in that bank
//! with its `keys` emptied, so a worker that finds the table complete
//! parses a few hundred bytes instead of the whole configuration.
//!
//! The entry names the digest and generation it was written for: a worker
//! that read the head and then the settings can tell when a newer
//! publication reused the bank in between.

use super::Digest;
use crate::store::cursor::{Reader, Writer};

const SETTINGS_VERSION: u8 = 1;

/// The entry: the digest and generation it belongs to, the key count, then
/// the settings text.
pub(super) fn encode_settings(
    digest: &Digest,
    generation: u64,
    key_count: usize,
    settings: &[u8],
) -> Vec<u8> {
    let mut out = Writer::with_capacity(1 + 32 + 16 + settings.len());
    out.u8(SETTINGS_VERSION)
        .bytes(digest)
        .u64(generation)
        .u64(key_count as u64)
        .bytes(settings);
    out.finish()
}

/// The key count and settings text of an entry written for exactly
/// (`digest`, `generation`).
pub(super) fn decode_settings<'a>(
    bytes: &'a [u8],
    digest: &Digest,
    generation: u64,
) -> Option<(usize, &'a [u8])> {
    let mut reader = Reader::new(bytes);
    let version = reader.u8()?;
    let stored_digest = reader.array::<32>()?;
    let stored_generation = reader.u64()?;
    let key_count = reader.u64()?;
    let matches =
        version == SETTINGS_VERSION && stored_digest == *digest && stored_generation == generation;
    let key_count = usize::try_from(key_count).ok()?;
    matches.then_some((key_count, reader.rest()))
}
