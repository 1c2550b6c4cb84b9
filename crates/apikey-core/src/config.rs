//! The plugin configuration (contract §1): the compiled [`Config`] and how
//! it is read.
//!
//! A control plane sends JSON. It is read in two steps, a file each:
//! `config/strict.rs` reads the text with serde_json into the types of
//! `config/document.rs` (the configuration as written), refusing unknown
//! fields, fields given twice (whatever the values, `null` too) and
//! anything but an object where one is expected; `config/validate.rs`
//! then checks every value and compiles them (with `config/checks.rs`
//! and, for rules, `config/rule.rs`) into a [`Config`] whose rules, plans
//! and limits are indexed for the request path. Any problem rejects the whole configuration with one
//! [`ConfigError`] naming the field (`keys[3].plan: unknown plan "gold"`),
//! so an operator can fix it and the filter keeps its previous table.

use core::fmt;

use crate::credentials::Schemes;
use crate::denial::DocUrl;
use crate::fleet::Fleet;
use crate::https::HttpsPolicy;
use crate::key_hash::KeyHash;
use crate::key_source::KeySource;
use crate::rate_limit::LimitTable;
use crate::rules::RuleSet;
use crate::scope::ScopePattern;
use crate::timestamp::UnixNanos;

mod checks;
mod document;
mod rule;
mod strict;
mod validate;

pub(crate) use self::validate::check_fleet_periods;

/// The longest tenant, env or plan name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest key `id`.
pub const MAX_ID_LEN: usize = 64;
/// The longest `name`, `hint` or `realm`.
pub const MAX_LABEL_LEN: usize = 256;
/// The most scopes one key may hold (contract §7.1): with 128-byte
/// patterns, a key's record stays bounded (see [`crate::key_record`]).
pub const MAX_KEY_SCOPES: usize = 256;
/// The most `rate_limits` entries one key may have (contract §7.1).
pub const MAX_KEY_LIMITS: usize = 64;

/// A refused configuration: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, as `keys[3].plan`; empty for the document as a whole.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether allowed responses carry the `RateLimit` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// Only on 429 (the default).
    #[default]
    Denied,
    /// On every response that counted against a limit.
    Always,
}

/// A validated plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Its name (an upstream header value).
    pub name: String,
    /// The scopes it grants; `None` = it does not narrow keys.
    pub scopes: Option<Vec<ScopePattern>>,
    /// Its limits.
    pub rate_limits: LimitTable,
}

/// Index of a plan in [`Config::plans`].
pub type PlanIndex = u16;

/// A validated key entry, as pushed into the shared key table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// Public name of the key.
    pub id: String,
    /// SHA-256 of the raw key.
    pub hash: KeyHash,
    /// Owning tenant.
    pub tenant: String,
    /// Held scope patterns, in configuration order.
    pub scopes: Vec<ScopePattern>,
    /// Its plan.
    pub plan: Option<PlanIndex>,
    /// Environment label (`live`, `test`).
    pub env: Option<String>,
    /// When it stops working.
    pub expires_at: Option<UnixNanos>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Its own limits, searched before the plan's.
    pub rate_limits: LimitTable,
}

/// A validated, compiled configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Keys, in configuration order.
    pub keys: Vec<KeySpec>,
    /// Plans, indexed by [`PlanIndex`].
    pub plans: Vec<Plan>,
    /// Route rules.
    pub rules: RuleSet,
    /// Enabled credential schemes.
    pub schemes: Schemes,
    /// When set, keys must start with one of these.
    pub key_prefixes: Option<Vec<String>>,
    /// Keep the credential header upstream.
    pub forward_credential: bool,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
    /// When `RateLimit` headers are sent.
    pub rate_limit_headers: RateLimitHeaders,
    /// The fleet's shared rate-limit service (contract §6).
    pub fleet: Option<Fleet>,
    /// `require_https` (§7.2): `Some` when plain-HTTP requests are refused.
    pub https: Option<HttpsPolicy>,
    /// `error_doc_url` (§7.4), split at its placeholder.
    pub error_doc_url: Option<DocUrl>,
    /// `key_source` (§8.3): when set, the configuration holds nothing else
    /// but `fleet`, and the table comes from the key service.
    pub key_source: Option<KeySource>,
}

impl Config {
    /// Parses a configuration. Empty or all-white-space text is the valid
    /// "nothing loaded yet" state and yields `Ok(None)`; `{}` is a
    /// configuration with no keys.
    pub fn parse(text: &[u8]) -> Result<Option<Self>, ConfigError> {
        Ok(Self::parse_with_settings(text)?.map(|(config, _)| config))
    }

    /// Parses a configuration as [`Config::parse`] does, and also returns
    /// its *settings*: the same configuration with the `keys` array
    /// emptied (`[]`), written back as JSON. Once the keys are in the
    /// shared table, the settings are all another worker needs: it parses
    /// a few hundred bytes instead of the whole text, and never holds a
    /// copy of a large table (with 1,000,000 keys, 160 MB of VM memory
    /// that Wasm never gives back).
    pub fn parse_with_settings(text: &[u8]) -> Result<Option<(Self, Vec<u8>)>, ConfigError> {
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let raw = strict::read::<document::RawConfig<'_>>(text)?;
        // Written from what was read rather than cut from the text: finding
        // `keys` in the text took a second pass over it, as long as a
        // fifth of the whole read. The text itself is the fallback (it
        // parses the same, only larger).
        let settings = document::settings(&raw).unwrap_or_else(|| text.to_vec());
        Ok(Some((raw.validate()?, settings)))
    }

    /// The plan at `index`.
    pub fn plan(&self, index: Option<PlanIndex>) -> Option<&Plan> {
        self.plans.get(usize::from(index?))
    }
}

#[cfg(test)]
mod tests;
