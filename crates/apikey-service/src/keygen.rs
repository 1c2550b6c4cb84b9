//! New keys, their hints and their ids, from a random source.
//!
//! A key is `<prefix><24 base62 characters>` (~143 bits), the shape of the
//! products we front (`sk_live_…`, `syx_live_…`, `crm_…`,
//! `sydx_<tenant>_…`). Characters are drawn by rejection sampling: a random
//! byte is used only when it is below 248 (4 × 62), so every character is
//! equally likely and there is no modulo bias. The random source is a trait
//! so tests can drive the maths with fixed bytes; the program uses the
//! operating system's ([`OsRandom`]). A raw key lives in a [`SecretKey`],
//! whose `Debug` prints nothing, so it cannot reach a log by accident.

use core::fmt;

/// The 62 characters a key's random part is made of, URL-safe and unambiguous
/// to copy.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters in a key: 24 × log2(62) ≈ 142.9 bits.
pub const KEY_RANDOM_CHARS: usize = 24;
/// Random characters in a key id after `key_`.
pub const ID_RANDOM_CHARS: usize = 8;
/// Leading random characters a hint shows after the prefix.
pub const HINT_HEAD: usize = 3;
/// Trailing characters a hint shows.
pub const HINT_TAIL: usize = 4;
/// What separates a hint's head from its tail.
pub const HINT_ELLIPSIS: char = '…';
/// The longest prefix accepted, so every key stays well under the 256
/// characters a credential may have.
pub const MAX_PREFIX_LEN: usize = 64;
/// The largest byte value used: 248 = 4 × 62, so `byte % 62` is uniform.
const ACCEPT_BELOW: u8 = 248;

/// The random source failed (the OS refused to give randomness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomError(pub String);

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the operating system's random source failed: {}", self.0)
    }
}

/// Fills buffers with random bytes.
pub trait RandomSource {
    /// Fills `buffer` entirely with random bytes.
    fn fill(&mut self, buffer: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's cryptographic random source (`getrandom(2)`).
#[derive(Debug, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buffer: &mut [u8]) -> Result<(), RandomError> {
        getrandom::fill(buffer).map_err(|error| RandomError(error.to_string()))
    }
}

/// A raw API key, held only long enough to hash it and show it once.
/// `Debug` is redacted; [`SecretKey::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The key text, for hashing and for the single time it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// `count` base62 characters, each uniform over the alphabet.
pub fn base62(random: &mut dyn RandomSource, count: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(count);
    // Refill in small batches: about 3% of bytes are rejected.
    let mut batch = [0u8; 32];
    while out.len() < count {
        random.fill(&mut batch)?;
        for byte in batch {
            if out.len() == count {
                break;
            }
            if byte < ACCEPT_BELOW {
                let index = usize::from(byte % 62);
                if let Some(&character) = BASE62.get(index) {
                    out.push(char::from(character));
                }
            }
        }
    }
    Ok(out)
}

/// Checks a key prefix: 1–64 visible ASCII characters (0x21–0x7E) without a
/// comma, the characters a credential may hold (contract §2).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let valid = |b: u8| (0x21..=0x7E).contains(&b) && b != b',';
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix.bytes().all(valid) {
        return Err(format!(
            "prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} visible ASCII characters without a comma"
        ));
    }
    Ok(())
}

/// Checks that a tenant can be spelled inside a key (`sydx_<tenant>_…`):
/// URL-safe, the RFC 3986 unreserved characters.
pub fn check_tenant_in_key(tenant: &str) -> Result<(), String> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if tenant.is_empty() || tenant.len() > MAX_PREFIX_LEN || !tenant.bytes().all(unreserved) {
        return Err(format!(
            "tenant {tenant:?} cannot be part of a key: use 1 to {MAX_PREFIX_LEN} of A-Z a-z 0-9 - . _ ~"
        ));
    }
    Ok(())
}

/// The prefix of a new key. Plain: `base`, or `sk_<env>_` (env `live` when
/// none is given). With the tenant spelled in (the seeds' `sydx_<tenant>_…`
/// form): `base` (default `sydx_`), the tenant, `_`.
pub fn choose_prefix(
    base: Option<&str>,
    tenant_in_key: Option<&str>,
    env: Option<&str>,
) -> Result<String, String> {
    let prefix = match (base, tenant_in_key) {
        (base, Some(tenant)) => {
            check_tenant_in_key(tenant)?;
            let base = base.unwrap_or("sydx_");
            check_prefix(base)?;
            format!("{base}{tenant}_")
        }
        (Some(base), None) => {
            check_prefix(base)?;
            base.to_owned()
        }
        (None, None) => {
            let prefix = format!("sk_{}_", env.unwrap_or("live"));
            check_prefix(&prefix).map_err(|error| format!("{error}; pass --prefix"))?;
            prefix
        }
    };
    Ok(prefix)
}

/// A new key: `prefix` followed by 24 random base62 characters.
pub fn new_key(random: &mut dyn RandomSource, prefix: &str) -> Result<SecretKey, RandomError> {
    Ok(SecretKey(format!(
        "{prefix}{}",
        base62(random, KEY_RANDOM_CHARS)?
    )))
}

/// A new key id, `key_` and 8 base62 characters, that `taken` does not hold.
pub fn new_id(
    random: &mut dyn RandomSource,
    taken: impl Fn(&str) -> bool,
) -> Result<String, RandomError> {
    loop {
        let id = format!("key_{}", base62(random, ID_RANDOM_CHARS)?);
        if !taken(&id) {
            return Ok(id);
        }
    }
}

/// The hint people see in place of the key: the prefix, the first three
/// random characters, `…`, the last four (`sk_live_AbC…9Mn0`).
pub fn hint(prefix: &str, key: &SecretKey) -> String {
    let random = key.expose().strip_prefix(prefix).unwrap_or(key.expose());
    let head: String = random.chars().take(HINT_HEAD).collect();
    let skip = random.chars().count().saturating_sub(HINT_TAIL);
    let tail: String = random.chars().skip(skip).collect();
    format!("{prefix}{head}{HINT_ELLIPSIS}{tail}")
}

/// The prefix a hint made by [`hint`] starts with, so `rotate` can issue the
/// new key in the old key's format; `None` for a hint of another shape.
pub fn prefix_from_hint(hint: &str) -> Option<&str> {
    let (head, tail) = hint.split_once(HINT_ELLIPSIS)?;
    if tail.chars().count() != HINT_TAIL || !tail.bytes().all(|b| BASE62.contains(&b)) {
        return None;
    }
    let cut = head.len().checked_sub(HINT_HEAD)?;
    let (prefix, shown) = (head.get(..cut)?, head.get(cut..)?);
    if !shown.bytes().all(|b| BASE62.contains(&b)) || check_prefix(prefix).is_err() {
        return None;
    }
    Some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays fixed bytes, cycling.
    struct Replay {
        bytes: Vec<u8>,
        at: usize,
    }

    impl Replay {
        fn new(bytes: &[u8]) -> Self {
            Self {
                bytes: bytes.to_vec(),
                at: 0,
            }
        }
    }

    impl RandomSource for Replay {
        fn fill(&mut self, buffer: &mut [u8]) -> Result<(), RandomError> {
            for slot in buffer {
                *slot = self.bytes[self.at % self.bytes.len()];
                self.at += 1;
            }
            Ok(())
        }
    }

    #[test]
    fn bytes_from_248_up_are_rejected_not_folded() {
        // 248..=255 would map onto 0..=7 with a plain modulo and make those
        // characters more likely; they must be skipped.
        let mut random = Replay::new(&[248, 255, 250, 0, 61, 62, 247]);
        let text = base62(&mut random, 4).unwrap();
        assert_eq!(text, "0z0z", "bytes 0, 61, 62 and 247 map to 0, z, 0, z");
    }

    #[test]
    fn every_accepted_byte_value_maps_to_each_character_exactly_four_times() {
        let mut counts = [0u32; 62];
        for byte in 0..ACCEPT_BELOW {
            counts[usize::from(byte % 62)] += 1;
        }
        assert!(counts.iter().all(|&count| count == 4), "{counts:?}");
    }

    #[test]
    fn a_source_of_only_rejected_bytes_then_good_ones_still_fills_the_key() {
        let mut bytes = vec![255u8; 40];
        bytes.extend(0u8..62);
        let mut random = Replay::new(&bytes);
        let key = new_key(&mut random, "sk_live_").unwrap();
        assert_eq!(key.expose().len(), "sk_live_".len() + KEY_RANDOM_CHARS);
        assert!(key.expose().starts_with("sk_live_"));
    }

    #[test]
    fn os_keys_have_the_prefix_and_24_base62_characters_and_differ() {
        let mut random = OsRandom;
        let a = new_key(&mut random, "syx_live_").unwrap();
        let b = new_key(&mut random, "syx_live_").unwrap();
        let random_part = a.expose().strip_prefix("syx_live_").unwrap();
        assert_eq!(random_part.len(), KEY_RANDOM_CHARS);
        assert!(random_part.bytes().all(|b| BASE62.contains(&b)));
        assert_ne!(a, b);
    }

    #[test]
    fn hint_shows_prefix_first_three_and_last_four() {
        let key = SecretKey("sk_live_AbCdefghijklmnopqrst9Mn0".to_owned());
        assert_eq!(hint("sk_live_", &key), "sk_live_AbC…9Mn0");
    }

    #[test]
    fn debug_of_a_secret_key_prints_no_key() {
        let key = SecretKey("sk_live_secret".to_owned());
        assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn the_prefix_is_recovered_from_a_hint_this_tool_made() {
        let key = SecretKey("sydx_acme_AbCdefghijklmnopqrst9Mn0".to_owned());
        let made = hint("sydx_acme_", &key);
        assert_eq!(prefix_from_hint(&made), Some("sydx_acme_"));
    }

    #[test]
    fn hints_of_other_shapes_give_no_prefix() {
        for other in [
            "",
            "sk_live_",
            "sk_live_AbC...9Mn0",
            "…9Mn0",
            "Ab…9Mn0",
            "sk_AbC…9M",
        ] {
            assert_eq!(prefix_from_hint(other), None, "hint {other:?}");
        }
    }

    #[test]
    fn ids_already_taken_are_drawn_again() {
        // Each draw reads a 32-byte batch: the first sees 0,1,2,0,…, the
        // second starts at byte 32, which is 2.
        let mut random = Replay::new(&[0, 1, 2]);
        let id = new_id(&mut random, |id| id == "key_01201201").unwrap();
        assert_eq!(id, "key_20120120");
    }

    #[test]
    fn prefixes_with_commas_spaces_or_nothing_are_refused() {
        for bad in ["", "sk live_", "a,b", "sk_é_", &"x".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "accepted {bad:?}");
        }
        for good in ["sk_live_", "crm_", "syx_live_", "sydx_acme_"] {
            assert!(check_prefix(good).is_ok(), "refused {good:?}");
        }
    }

    #[test]
    fn the_default_prefix_follows_the_env_and_the_tenant_form_defaults_to_sydx() {
        assert_eq!(choose_prefix(None, None, None).unwrap(), "sk_live_");
        assert_eq!(choose_prefix(None, None, Some("test")).unwrap(), "sk_test_");
        assert_eq!(
            choose_prefix(Some("crm_"), None, Some("test")).unwrap(),
            "crm_"
        );
        assert_eq!(
            choose_prefix(None, Some("acme"), None).unwrap(),
            "sydx_acme_"
        );
        assert_eq!(
            choose_prefix(Some("ak_"), Some("acme"), None).unwrap(),
            "ak_acme_"
        );
        assert!(choose_prefix(None, None, Some("my env")).is_err());
        assert!(choose_prefix(None, Some("acme corp"), None).is_err());
    }

    #[test]
    fn only_url_safe_tenants_go_inside_a_key() {
        assert!(check_tenant_in_key("acme-corp.eu_1~").is_ok());
        for bad in ["", "acme corp", "acme/x", "acmé", "a,b"] {
            assert!(check_tenant_in_key(bad).is_err(), "accepted {bad:?}");
        }
    }
}
