//! The key service feed's digest (docs/configuration.md §10.5), written
//! once for both ends: the service computes it for every answer, the
//! filter recomputes it before it serves a table. Two copies could drift
//! apart in a way no test of either end alone would notice.
//!
//! `K = Σ SHA-256(key line) mod 2^256` (each hash a big-endian number, every
//! key once, its latest line); `digest = hex(SHA-256("apikey-feed-v1\n" ‖
//! SHA-256(settings line) ‖ K as 32 big-endian bytes))`. The sum is
//! additive, so either end keeps it up to date per change: add a key's new
//! line hash, subtract its previous one.

use sha2::{Digest as _, Sha256};

/// What the digest starts with (names the format of the digest).
pub const DIGEST_CONTEXT: &[u8] = b"apikey-feed-v1\n";

/// The SHA-256 of a feed line (a key line or the settings line), as the
/// digest hashes it: the line's bytes without its `\n`.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// The sum of the key lines' hashes modulo 2^256, as four big-endian
/// 64-bit limbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineSum([u64; 4]);

fn limbs(hash: &[u8; 32]) -> [u64; 4] {
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(hash.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *limb = u64::from_be_bytes(bytes);
    }
    limbs
}

impl LineSum {
    /// Adds a line's hash.
    pub fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = false;
        for (limb, other) in self.0.iter_mut().rev().zip(limbs(hash).iter().rev()) {
            let (partial, first) = limb.overflowing_add(*other);
            let (total, second) = partial.overflowing_add(u64::from(carry));
            *limb = total;
            carry = first || second;
        }
    }

    /// Takes away a line's hash added before.
    pub fn subtract(&mut self, hash: &[u8; 32]) {
        let mut borrow = false;
        for (limb, other) in self.0.iter_mut().rev().zip(limbs(hash).iter().rev()) {
            let (partial, first) = limb.overflowing_sub(*other);
            let (total, second) = partial.overflowing_sub(u64::from(borrow));
            *limb = total;
            borrow = first || second;
        }
    }

    /// The table's digest with this sum and the settings line's hash, in
    /// lowercase hex.
    pub fn digest(&self, settings_hash: &[u8; 32]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_CONTEXT);
        hasher.update(settings_hash);
        for limb in self.0 {
            hasher.update(limb.to_be_bytes());
        }
        const_hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn hash_of(n: u8) -> [u8; 32] {
        let mut hash = [0u8; 32];
        hash[31] = n;
        hash
    }

    #[test]
    fn the_sum_carries_wraps_and_undoes_exactly() {
        let mut sum = LineSum([0, 0, 0, u64::MAX]);
        sum.add(&hash_of(1));
        assert_eq!(
            sum,
            LineSum([0, 0, 1, 0]),
            "the carry did not reach the next limb"
        );
        sum.subtract(&hash_of(1));
        assert_eq!(
            sum,
            LineSum([0, 0, 0, u64::MAX]),
            "subtracting did not undo adding"
        );
        let mut wrapped = LineSum([u64::MAX; 4]);
        wrapped.add(&hash_of(1));
        assert_eq!(wrapped, LineSum([0; 4]), "the sum is not modulo 2^256");
        wrapped.subtract(&hash_of(1));
        assert_eq!(wrapped, LineSum([u64::MAX; 4]), "a borrow did not wrap");
    }

    #[test]
    fn the_digest_is_the_documented_one() {
        // docs/configuration.md §10.5's Python, for the key lines "a" and
        // "b" and the settings line {"settings":{}}.
        let mut sum = LineSum::default();
        sum.add(&line_hash(b"a"));
        sum.add(&line_hash(b"b"));
        assert_eq!(
            sum.digest(&line_hash(br#"{"settings":{}}"#)),
            "a7b3356a2475e80433aeaf80bd4ac1ae95b28d01da8464290c72b97d7ef1c08c"
        );
    }
}
