//! The SHA-256 of an API key, the only form in which a key is stored.
//!
//! The configuration carries hashes, never keys; the filter hashes the key a
//! client presents and looks the hash up. [`KeyHash`] compares in constant
//! time and never prints its bytes, so a hash (which stands in for a secret)
//! cannot leak through `Debug` output or a timing difference.

use core::fmt;
use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 digest of a raw API key.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes the exact bytes a client presented.
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Parses 64 hexadecimal digits, upper or lower case.
    pub fn from_hex(text: &str) -> Result<Self, &'static str> {
        let mut bytes = [0u8; 32];
        const_hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| "must be 64 hexadecimal digits")?;
        Ok(Self(bytes))
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hexadecimal, the canonical spelling in configurations.
    pub fn to_hex(&self) -> String {
        const_hex::encode(self.0)
    }

    /// Appends the lower-case hexadecimal spelling to `text` (shared-data
    /// keys are built this way once per key and per request, without an
    /// intermediate string).
    pub fn push_hex(&self, text: &mut String) {
        let mut digits = [0u8; 64];
        // Cannot fail: 64 digits for 32 bytes, all ASCII.
        if const_hex::encode_to_slice(self.0, &mut digits).is_ok() {
            text.push_str(core::str::from_utf8(&digits).unwrap_or_default());
        }
    }
}

impl PartialEq for KeyHash {
    /// Constant time: every byte is compared whatever the first difference.
    fn eq(&self, other: &Self) -> bool {
        let mut difference = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            difference |= a ^ b;
        }
        // `black_box` keeps the optimiser from turning the fold into an early exit.
        core::hint::black_box(difference) == 0
    }
}

impl Eq for KeyHash {}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn hash_of_test_matches_the_contract_example() {
        let hash = KeyHash::of(b"test");
        assert_eq!(
            hash.to_hex(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn upper_case_hex_is_folded() {
        let upper =
            KeyHash::from_hex("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08")
                .unwrap();
        assert_eq!(upper, KeyHash::of(b"test"));
    }

    #[test]
    fn bad_hex_is_refused() {
        let last_digit_bad = format!("{}ag", "a".repeat(62));
        let first_digit_bad = format!("ga{}", "a".repeat(62));
        for text in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &last_digit_bad,
            &first_digit_bad,
            &format!("{} ", "a".repeat(63)),
        ] {
            assert!(KeyHash::from_hex(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn every_byte_value_survives_hex_and_back() {
        for start in (0u8..=255).step_by(32) {
            let mut bytes = [0u8; 32];
            for (offset, byte) in bytes.iter_mut().enumerate() {
                *byte = start.wrapping_add(offset as u8);
            }
            let hash = KeyHash::from_bytes(bytes);
            let text = hash.to_hex();
            assert_eq!(text, text.to_lowercase(), "not lower case: {text}");
            assert_eq!(
                KeyHash::from_hex(&text).unwrap().as_bytes(),
                &bytes,
                "{text}"
            );
        }
    }

    #[test]
    fn debug_never_prints_the_digest() {
        let text = format!("{:?}", KeyHash::of(b"secret"));
        assert_eq!(text, "KeyHash(<redacted>)");
    }

    #[test]
    fn hashes_differing_in_the_last_byte_are_unequal() {
        let mut bytes = *KeyHash::of(b"a").as_bytes();
        let a = KeyHash::from_bytes(bytes);
        bytes[31] ^= 1;
        assert_ne!(a, KeyHash::from_bytes(bytes));
    }
}
