//! Checks of single values shared by several fields: ids, names and labels
//! that become header values or log text, scope patterns, and fields a
//! document must hold. Field paths are rendered only for a refusal, so the
//! callers pass them as `format_args!` (formatting six of them for each of
//! 1,000,000 keys cost a large share of a configuration's load).

use core::fmt;
use std::collections::HashSet;

use super::{refuse, ConfigError, KeySpec, MAX_ID_LEN, MAX_LABEL_LEN, MAX_NAME_LEN};
use crate::scope::ScopePattern;

/// The value of a required field, or the refusal naming the object it is
/// missing from (`keys[0]: missing field \`tenant\``); `null` counts as
/// missing (contract §1.1).
pub(super) fn required<T>(
    value: Option<T>,
    object: &dyn fmt::Display,
    name: &str,
) -> Result<T, ConfigError> {
    value.ok_or_else(|| refuse(object.to_string(), format!("missing field `{name}`")))
}

/// Key ids: 1–64 of `A-Z a-z 0-9 _ . -`.
pub(super) fn check_id(field: &dyn fmt::Display, id: &str) -> Result<(), ConfigError> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(valid) {
        return Err(refuse(
            field.to_string(),
            format!("{id:?} must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ . -"),
        ));
    }
    Ok(())
}

/// Tenant, env and plan names become header values: 1–128 bytes, no
/// control character.
pub(super) fn check_name(field: &dyn fmt::Display, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(refuse(
            field.to_string(),
            format!("must be 1 to {MAX_NAME_LEN} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse(field.to_string(), "holds a control character"));
    }
    Ok(())
}

/// Free text for people and logs: no control characters (log injection),
/// bounded length.
pub(super) fn check_label(field: &dyn fmt::Display, label: &str) -> Result<(), ConfigError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(refuse(
            field.to_string(),
            format!("must be at most {MAX_LABEL_LEN} bytes"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(refuse(field.to_string(), "holds a control character"));
    }
    Ok(())
}

/// Parses scope patterns, naming the first bad one by its index.
pub(super) fn parse_patterns<S: AsRef<str>>(
    field: &dyn fmt::Display,
    texts: &[S],
) -> Result<Vec<ScopePattern>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            ScopePattern::parse(text.as_ref())
                .map_err(|reason| refuse(format!("{field}[{index}]"), reason))
        })
        .collect()
}

/// Refuses a key id or hash given twice, naming the second.
pub(super) fn check_unique(keys: &[KeySpec]) -> Result<(), ConfigError> {
    let mut ids = HashSet::with_capacity(keys.len());
    let mut hashes = HashSet::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        if !ids.insert(key.id.as_str()) {
            return Err(refuse(
                format!("keys[{index}].id"),
                format!("duplicate id {:?}", key.id),
            ));
        }
        if !hashes.insert(key.hash.as_bytes()) {
            return Err(refuse(
                format!("keys[{index}].sha256"),
                "duplicate sha256 (another key has the same hash)",
            ));
        }
    }
    Ok(())
}
