//! The service's settings: the §1 configuration without `keys` (plans,
//! rules, schemes, key prefixes, limits, the §7 options), plus the
//! service's own `max_keys_per_tenant`, and the one place keys are checked
//! against them.
//!
//! Nothing here validates §1 itself: every check goes through the core's
//! `Config::parse`, the function the filter runs, on a document assembled
//! from the settings and the keys in question (`{"keys": [...], <settings>}`),
//! so the service can never accept what a gateway would refuse, and the two
//! can never drift apart. The validator's field names (`keys[3].plan`) are
//! turned back into the caller's terms: the field of the request, or the
//! line of an import.

use apikey_core::config::{Config, ConfigError};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Kind};
use crate::strict_json;

/// The name of the service's own setting (not a §1 field: the filter never
/// sees it).
pub const MAX_KEYS_FIELD: &str = "max_keys_per_tenant";

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The document as `GET /v1/settings` returns it.
    document: Map<String, Value>,
    /// The §1 part, serialised without its braces, ready to follow a
    /// `"keys"` member (empty for `{}`).
    filter_members: String,
    /// `max_keys_per_tenant`, when set.
    max_keys_per_tenant: Option<u64>,
}

/// A key the validator refused: its position in the batch and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefusal {
    /// The key's index in the batch (`None` when the validator named no key).
    pub index: Option<usize>,
    /// The field within the key (`plan`, `rate_limits.*.requests`), or empty.
    pub field: String,
    /// The validator's reason.
    pub reason: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            document: Map::new(),
            filter_members: String::new(),
            max_keys_per_tenant: None,
        }
    }
}

impl Settings {
    /// Reads and validates a `PUT /v1/settings` body: a JSON object, each
    /// field at most once, no `keys`, `max_keys_per_tenant` a positive whole
    /// number (or null), and the rest valid §1 as the filter judges it.
    pub fn from_body(bytes: &[u8]) -> Result<Self, ApiError> {
        Self::from_document(strict_json::parse_object(bytes)?)
    }

    /// Validates settings given as an object (the CLI's `import-state`).
    pub fn from_document(mut document: Map<String, Value>) -> Result<Self, ApiError> {
        if document.contains_key("keys") {
            return Err(ApiError::invalid(
                "keys",
                "settings hold no keys: keys are made with POST /v1/keys or loaded with POST /v1/keys/import",
            ));
        }
        let max_keys_per_tenant = match document.get(MAX_KEYS_FIELD) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().filter(|&n| n >= 1).ok_or_else(|| {
                ApiError::invalid(MAX_KEYS_FIELD, "must be a whole number of at least 1")
            })?),
        };
        if document.get(MAX_KEYS_FIELD) == Some(&Value::Null) {
            document.remove(MAX_KEYS_FIELD);
        }
        let mut filter = document.clone();
        filter.remove(MAX_KEYS_FIELD);
        let text = serde_json::to_string(&Value::Object(filter))
            .map_err(|error| ApiError::new(Kind::Internal, error.to_string()))?;
        Config::parse(text.as_bytes()).map_err(|error| refused_setting(&error))?;
        let filter_members = text
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            document,
            filter_members,
            max_keys_per_tenant,
        })
    }

    /// Settings as stored by this service (validated when they were put).
    pub fn from_stored(text: &str) -> Result<Self, ApiError> {
        Self::from_body(text.as_bytes()).map_err(|error| {
            ApiError::new(
                Kind::Internal,
                format!("the stored settings no longer validate: {error}"),
            )
        })
    }

    /// The document as `GET /v1/settings` returns it.
    pub fn document(&self) -> &Map<String, Value> {
        &self.document
    }

    /// The document as stored in the database.
    pub fn to_text(&self) -> String {
        Value::Object(self.document.clone()).to_string()
    }

    /// The tenant cap, when set.
    pub fn max_keys_per_tenant(&self) -> Option<u64> {
        self.max_keys_per_tenant
    }

    /// `key_prefixes`, when the settings restrict them.
    pub fn key_prefixes(&self) -> Option<Vec<&str>> {
        let list = self.document.get("key_prefixes")?.as_array()?;
        Some(list.iter().filter_map(Value::as_str).collect())
    }

    /// Whether a key starting with `prefix` would be accepted by the
    /// filter's `key_prefixes`.
    pub fn allows_prefix(&self, prefix: &str) -> bool {
        self.key_prefixes()
            .is_none_or(|allowed| allowed.iter().any(|p| prefix.starts_with(p)))
    }

    /// The whole §1 configuration with these keys (each a serialised JSON
    /// object), as the filter would receive it.
    pub fn config_with_keys<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut document = Vec::from(&b"{\"keys\":["[..]);
        for (index, key) in keys.into_iter().enumerate() {
            if index > 0 {
                document.push(b',');
            }
            document.extend_from_slice(key);
        }
        document.push(b']');
        if !self.filter_members.is_empty() {
            document.push(b',');
            document.extend_from_slice(self.filter_members.as_bytes());
        }
        document.push(b'}');
        document
    }

    /// Validates keys (each one serialised JSON object) against these
    /// settings with the filter's own validator. The caller has already
    /// made sure each is exactly one object, so `keys[i]` is the i-th.
    pub fn check_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), KeyRefusal> {
        let document = self.config_with_keys(keys);
        match Config::parse(&document) {
            Ok(_) => Ok(()),
            Err(error) => Err(key_refusal(&error)),
        }
    }

    /// Validates one key object, naming a refused field as the request's
    /// own (`plan`, not `keys[0].plan`).
    pub fn check_key(&self, key: &Value) -> Result<(), ApiError> {
        let text = key.to_string();
        self.check_keys([text.as_bytes()])
            .map_err(|refusal| ApiError::invalid(&refusal.field, refusal.reason))
    }
}

/// A refused setting: its field as the validator names it.
fn refused_setting(error: &ConfigError) -> ApiError {
    ApiError::invalid(&error.field, error.reason.clone())
}

/// `keys[3].plan` → key 3, field `plan`.
fn key_refusal(error: &ConfigError) -> KeyRefusal {
    let parsed = error.field.strip_prefix("keys[").and_then(|rest| {
        let (index, field) = rest.split_once(']')?;
        let index = index.parse::<usize>().ok()?;
        Some((index, field.strip_prefix('.').unwrap_or(field).to_owned()))
    });
    match parsed {
        Some((index, field)) => KeyRefusal {
            index: Some(index),
            field,
            reason: error.reason.clone(),
        },
        None => KeyRefusal {
            index: None,
            field: error.field.clone(),
            reason: error.reason.clone(),
        },
    }
}

/// The settings a refusal of stored keys reports: 409, naming the key.
pub fn stored_key_conflict(id: &str, refusal: &KeyRefusal) -> ApiError {
    let field = if refusal.field.is_empty() {
        String::new()
    } else {
        format!(".{}", refusal.field)
    };
    ApiError::new(
        Kind::Conflict,
        format!(
            "these settings would make the stored key {id:?} invalid ({id}{field}: {}); change or revoke the key first",
            refusal.reason
        ),
    )
    .with("id", json!(id))
    .with("field", json!(refusal.field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated_by_the_filters_validator_and_name_the_field() {
        let error = Settings::from_body(br#"{"schemes": ["bearer", "cookie"]}"#).unwrap_err();
        assert_eq!(error.kind, Kind::InvalidRequest);
        assert!(
            error.field().is_some_and(|f| f.starts_with("schemes")),
            "{error}"
        );
        let error = Settings::from_body(br#"{"plans": {}, "colour": "red"}"#).unwrap_err();
        assert_eq!(error.field(), Some("colour"), "{error}");
    }

    #[test]
    fn keys_and_a_bad_cap_are_refused_and_a_null_cap_is_no_cap() {
        let error = Settings::from_body(br#"{"keys": []}"#).unwrap_err();
        assert_eq!(error.field(), Some("keys"));
        for bad in ["0", "-1", "1.5", "\"3\""] {
            let body = format!(r#"{{"max_keys_per_tenant": {bad}}}"#);
            let error = Settings::from_body(body.as_bytes()).unwrap_err();
            assert_eq!(error.field(), Some(MAX_KEYS_FIELD), "{bad}: {error}");
        }
        let settings = Settings::from_body(br#"{"max_keys_per_tenant": null}"#).unwrap();
        assert_eq!(settings.max_keys_per_tenant(), None);
        assert_eq!(settings.document(), &Map::new());
        let settings = Settings::from_body(br#"{"max_keys_per_tenant": 3}"#).unwrap();
        assert_eq!(settings.max_keys_per_tenant(), Some(3));
    }

    #[test]
    fn a_key_is_checked_against_the_plans_and_refusals_name_its_own_field() {
        let settings = Settings::from_body(br#"{"plans": {"pro": {}}}"#).unwrap();
        let sha = "a".repeat(64);
        let good = json!({"id": "key_1", "sha256": sha, "tenant": "acme", "plan": "pro"});
        settings.check_key(&good).unwrap();
        let bad = json!({"id": "key_1", "sha256": sha, "tenant": "acme", "plan": "gold"});
        let error = settings.check_key(&bad).unwrap_err();
        assert_eq!(error.field(), Some("plan"), "{error}");
    }

    #[test]
    fn a_batch_refusal_says_which_key() {
        let settings = Settings::default();
        let one = json!({"id": "a", "sha256": "a".repeat(64), "tenant": "t"}).to_string();
        let two =
            json!({"id": "b", "sha256": "b".repeat(64), "tenant": "t", "scopes": [1]}).to_string();
        let refusal = settings
            .check_keys([one.as_bytes(), two.as_bytes()])
            .unwrap_err();
        assert_eq!(refusal.index, Some(1), "{refusal:?}");
        assert!(refusal.field.starts_with("scopes"), "{refusal:?}");
    }

    #[test]
    fn the_assembled_configuration_is_the_settings_with_the_keys() {
        let settings = Settings::from_body(br#"{"plans": {}, "max_keys_per_tenant": 2}"#).unwrap();
        let document = settings.config_with_keys([&b"{\"id\":\"a\"}"[..]]);
        let value: Value = serde_json::from_slice(&document).unwrap();
        assert_eq!(value, json!({"keys": [{"id": "a"}], "plans": {}}));
    }
}
