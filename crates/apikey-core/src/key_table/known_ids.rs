//! The list of key ids whose bucket entries exist, kept so a reload looks
//! up only the entries of new ids: 16-byte fingerprints of the ids, sorted,
//! read in place and searched by bisection.
//!
//! A few lines of radix sort and binary search here instead of the
//! standard library's, whose instantiation for 16-byte arrays added 26 KB
//! to the module.

use crate::store::cursor::{Reader, Writer};

const KNOWN_BUCKETS_VERSION: u8 = 1;

/// A fingerprint's size in bytes.
const WIDTH: usize = 16;

/// A key id's 128-bit FNV-1a hash, big-endian so that byte order is
/// numeric order. Ids come from the trusted configuration; should two ever
/// share one, the newer id's entry would be missing and its requests
/// denied (`Missing`): never over-admitted.
pub(super) fn id_fingerprint(id: &str) -> [u8; WIDTH] {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = id.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u128::from(byte)).wrapping_mul(PRIME)
    });
    hash.to_be_bytes()
}

/// Sorts fingerprints by their bytes: a least-significant-digit radix
/// sort, one pass per byte; linear time.
pub(super) fn sort_fingerprints(fingerprints: &mut Vec<[u8; WIDTH]>) {
    let mut scratch = vec![[0u8; WIDTH]; fingerprints.len()];
    for position in (0..WIDTH).rev() {
        let digit = |fingerprint: &[u8; WIDTH]| {
            usize::from(fingerprint.get(position).copied().unwrap_or(0))
        };
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

/// The entry holding sorted `fingerprints`.
pub(super) fn encode_known(fingerprints: &[[u8; WIDTH]]) -> Vec<u8> {
    let mut out = Writer::with_capacity(1 + WIDTH * fingerprints.len());
    out.u8(KNOWN_BUCKETS_VERSION);
    for fingerprint in fingerprints {
        out.bytes(fingerprint);
    }
    out.finish()
}

/// A sorted list of fingerprints, read in place from its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KnownList<'a>(&'a [u8]);

impl<'a> KnownList<'a> {
    /// The list in `bytes`; empty (nothing known) when it is of another
    /// format or not sorted.
    pub(super) fn decode(bytes: &'a [u8]) -> Self {
        let mut reader = Reader::new(bytes);
        let list = match reader.u8() {
            Some(KNOWN_BUCKETS_VERSION) if reader.remaining() % WIDTH == 0 => Self(reader.rest()),
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
        self.0.len() / WIDTH
    }

    fn at(self, index: usize) -> Option<&'a [u8]> {
        self.0.get(index * WIDTH..index * WIDTH + WIDTH)
    }

    /// Whether `fingerprint` is in the list.
    pub(super) fn contains(self, fingerprint: &[u8; WIDTH]) -> bool {
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

    /// Whether the list holds exactly `fingerprints`, in order.
    pub(super) fn equals(self, fingerprints: &[[u8; WIDTH]]) -> bool {
        self.len() == fingerprints.len()
            && fingerprints
                .iter()
                .enumerate()
                .all(|(index, fingerprint)| self.at(index) == Some(fingerprint.as_slice()))
    }
}
