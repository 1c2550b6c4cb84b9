//! The configuration as written (contract §1): one type per kind of JSON
//! object, each field named once, read by serde's derive through
//! [`strict`](super::strict).
//!
//! Every field is optional at this level: `null` means left out (contract
//! §1.1), so a required field given as `null` must be refused as missing,
//! which the derive cannot do; [`validate`](super::validate) checks both.
//! Strings that are only looked at are borrowed from the text ([`Text`]);
//! strings the compiled configuration keeps are owned.
//!
//! The same types write the *settings* back ([`settings`]): the document
//! without its keys, which other workers parse once the key table is
//! published.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::strict::Text;

/// The whole document.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig<'a> {
    #[serde(borrow, serialize_with = "no_keys")]
    pub keys: Option<Vec<RawKey<'a>>>,
    #[serde(borrow)]
    pub plans: Option<Entries<String, RawPlan<'a>>>,
    #[serde(borrow)]
    pub rules: Option<Vec<RawRule<'a>>>,
    #[serde(borrow)]
    pub schemes: Option<Vec<Text<'a>>>,
    pub key_prefixes: Option<Vec<String>>,
    pub forward_credential: Option<bool>,
    pub realm: Option<String>,
    #[serde(borrow)]
    pub rate_limit_headers: Option<Text<'a>>,
    pub case_insensitive_paths: Option<bool>,
    #[serde(borrow)]
    pub fleet: Option<RawFleet<'a>>,
    pub require_https: Option<bool>,
    pub trusted_https_header: Option<String>,
    #[serde(borrow)]
    pub error_doc_url: Option<Text<'a>>,
    /// `key_source` (contract §8.3): settings and keys come from the key
    /// service. Never in the settings written back (a table built from the
    /// feed has none).
    #[serde(skip_serializing)]
    pub key_source: Option<RawKeySource>,
}

/// `key_source` (contract §8.3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeySource {
    pub cluster: Option<String>,
    pub token: Option<String>,
    pub authority: Option<String>,
}

/// An entry of `keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey<'a> {
    pub id: Option<String>,
    #[serde(borrow)]
    pub sha256: Option<Text<'a>>,
    pub tenant: Option<String>,
    #[serde(borrow)]
    pub scopes: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    pub plan: Option<Text<'a>>,
    pub env: Option<String>,
    #[serde(borrow)]
    pub expires_at: Option<Text<'a>>,
    pub revoked: Option<bool>,
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    #[serde(borrow)]
    pub hint: Option<Text<'a>>,
    /// Extension: when the key was made, for people (the CLI's `list`).
    #[serde(borrow)]
    pub created_at: Option<Text<'a>>,
    /// Extension: the id of the key a rotation made to replace this one
    /// (the CLI refuses to rotate a key twice); not looked at otherwise.
    #[serde(borrow)]
    pub replaced_by: Option<Text<'a>>,
    #[serde(borrow)]
    pub rate_limits: Option<Entries<Text<'a>, RawLimit>>,
}

/// A value of `plans`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan<'a> {
    #[serde(borrow)]
    pub scopes: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    pub rate_limits: Option<Entries<Text<'a>, RawLimit>>,
}

/// A value of a `rate_limits` object.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub requests: Option<u64>,
    pub period_seconds: Option<u64>,
    pub burst: Option<u64>,
}

/// An entry of `rules`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule<'a> {
    #[serde(borrow)]
    pub path: Option<Text<'a>>,
    #[serde(borrow)]
    pub path_prefix: Option<Text<'a>>,
    pub methods: Option<Vec<String>>,
    pub public: Option<bool>,
    pub scope: Option<String>,
}

/// `fleet` (contract §6).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet<'a> {
    pub cluster: Option<String>,
    pub domain: Option<String>,
    pub timeout_ms: Option<u64>,
    #[serde(borrow)]
    pub on_failure: Option<Text<'a>>,
}

/// A JSON object read as its entries in order (plan order is
/// [`PlanIndex`](super::PlanIndex) order), refusing a name given twice:
/// a map type would silently keep one of the two values.
pub(super) struct Entries<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, K, V> Deserialize<'de> for Entries<K, V>
where
    K: Deserialize<'de> + AsRef<str>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

struct EntriesVisitor<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for EntriesVisitor<K, V>
where
    K: Deserialize<'de> + AsRef<str>,
    V: Deserialize<'de>,
{
    type Value = Entries<K, V>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(K, V)> = Vec::new();
        while let Some(name) = map.next_key::<K>()? {
            if entries
                .iter()
                .any(|(seen, _)| seen.as_ref() == name.as_ref())
            {
                return Err(A::Error::custom(format!(
                    "{:?} is given twice",
                    name.as_ref()
                )));
            }
            let value = map.next_value()?;
            entries.push((name, value));
        }
        Ok(Entries(entries))
    }
}

/// The settings of a document: `raw` written back as JSON with `keys`
/// emptied (`[]`). Everything else keeps its value (a field left out or
/// `null` is written as `null`, which reads the same), so the settings
/// parse to the same [`Config`](super::Config) without its keys.
pub(super) fn settings(raw: &RawConfig<'_>) -> Option<Vec<u8>> {
    serde_json::to_vec(raw).ok()
}

/// `keys` in the settings: always empty.
fn no_keys<S: Serializer>(_: &Option<Vec<RawKey<'_>>>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(core::iter::empty::<()>())
}

impl<K: Serialize, V: Serialize> Serialize for Entries<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}
