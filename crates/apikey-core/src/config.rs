//! The plugin configuration (contract §1): parsing, validation, compilation.
//!
//! A control plane sends JSON. It is read (by [`crate::json`]) into `Raw*`
//! types that refuse unknown fields and names given twice (whatever the
//! values, `null` too), then validated field by field into a
//! [`Config`] whose rules, plans and limits are indexed for the request
//! path. Any problem rejects the whole configuration with one
//! [`ConfigError`] naming the field (`keys[3].plan: unknown plan "gold"`),
//! so an operator can fix it and the filter keeps its previous table.

use core::fmt;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use crate::credentials::{Scheme, Schemes};
use crate::denial::DocUrl;
use crate::fleet::{Fleet, OnFailure};
use crate::https::HttpsPolicy;
use crate::json::{JsonError, Path, Reader};
use crate::key_hash::KeyHash;
use crate::path;
use crate::rate_limit::{Limit, LimitTable, MAX_PERIOD_SECONDS, MAX_REQUESTS};
use crate::rls_codec::Unit;
use crate::rules::{PathMatch, Requirement, Rule, RuleSet};
use crate::scope::{check_scope_name, ScopePattern};
use crate::timestamp::{parse_rfc3339, UnixNanos};

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
}

impl Config {
    /// Parses a configuration. Empty or all-white-space text is the valid
    /// "nothing loaded yet" state and yields `Ok(None)`; `{}` is a
    /// configuration with no keys.
    pub fn parse(text: &[u8]) -> Result<Option<Self>, ConfigError> {
        Ok(Self::parse_with_settings(text)?.map(|(config, _)| config))
    }

    /// Parses a configuration as [`Config::parse`] does, and also returns
    /// its *settings*: the same text with the `keys` array emptied (`[]`).
    /// Once the keys are in the shared table, the settings are all another
    /// worker needs: it parses a few hundred bytes instead of the whole
    /// text, and never holds a copy of a large table (with 1,000,000 keys,
    /// 160 MB of VM memory that Wasm never gives back).
    pub fn parse_with_settings(text: &[u8]) -> Result<Option<(Self, Vec<u8>)>, ConfigError> {
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let mut reader = Reader::new(text);
        let mut raw = RawConfig::read(&mut reader)?;
        reader.end()?;
        let settings = match raw.keys_span.take() {
            Some(span) => {
                let (before, rest) = text.split_at(span.start.min(text.len()));
                let after = rest.get(span.len()..).unwrap_or_default();
                [before, b"[]", after].concat()
            }
            None => text.to_vec(),
        };
        raw.validate().map(|config| Some((config, settings)))
    }

    /// The plan at `index`.
    pub fn plan(&self, index: Option<PlanIndex>) -> Option<&Plan> {
        self.plans.get(usize::from(index?))
    }
}

impl From<JsonError> for ConfigError {
    fn from(error: JsonError) -> Self {
        Self {
            field: error.field,
            reason: error.reason,
        }
    }
}

/// Reads an optional field: `null` leaves it out. A repeat never gets
/// here: [`fields`] refuses it first, whatever either value is.
fn optional<'a, T>(
    reader: &mut Reader<'a>,
    slot: &mut Option<T>,
    path: &Path<'_>,
    read: impl FnOnce(&mut Reader<'a>, &Path<'_>) -> Result<T, JsonError>,
) -> Result<(), JsonError> {
    if reader.null()? {
        return Ok(());
    }
    *slot = Some(read(reader, path)?);
    Ok(())
}

/// Reads an object whose field names are `names`, refusing any other name
/// and any name given twice before `field` reads its value.
///
/// The repeat is judged on the name alone (contract §7.1, issue 17): a
/// check on the stored value missed `"expires_at": "2020-…",
/// "expires_at": null`, since `null` stores nothing, and kept the first
/// value while another reader of the same text may keep the last.
fn fields<'a, const N: usize>(
    reader: &mut Reader<'a>,
    path: &Path<'_>,
    names: &[&str; N],
    mut field: impl FnMut(&mut Reader<'a>, &str, &Path<'_>) -> Result<(), JsonError>,
) -> Result<(), JsonError> {
    let mut seen = [false; N];
    reader.object(path, |reader, name, at| {
        let slot = names
            .iter()
            .position(|known| *known == name)
            .and_then(|index| seen.get_mut(index))
            .ok_or_else(|| unknown_field(at, name, names))?;
        if *slot {
            return Err(JsonError::at(at, "is given twice"));
        }
        *slot = true;
        field(reader, name, at)
    })
}

/// The refusal of a field the schema does not have.
fn unknown_field(path: &Path<'_>, name: &str, expected: &[&str]) -> JsonError {
    let expected = expected
        .iter()
        .map(|known| format!("`{known}`"))
        .collect::<Vec<_>>()
        .join(", ");
    JsonError::at(
        path,
        format!("unknown field `{name}`, expected one of {expected}"),
    )
}

/// The refusal of a required field left out.
fn missing(path: &Path<'_>, name: &str) -> JsonError {
    JsonError::at(path, format!("missing field `{name}`"))
}

/// A JSON object read in order, refusing a name given twice.
#[derive(Debug)]
struct UniqueMap<V>(Vec<(String, V)>);

impl<V> UniqueMap<V> {
    fn read<'a>(
        reader: &mut Reader<'a>,
        path: &Path<'_>,
        mut value: impl FnMut(&mut Reader<'a>, &Path<'_>) -> Result<V, JsonError>,
    ) -> Result<Self, JsonError> {
        let mut entries: Vec<(String, V)> = Vec::new();
        reader.object(path, |reader, name, field| {
            if entries.iter().any(|(seen, _)| seen == name) {
                return Err(JsonError::at(path, format!("{name:?} is given twice")));
            }
            let entry = value(reader, field)?;
            entries.push((name.to_owned(), entry));
            Ok(())
        })?;
        Ok(Self(entries))
    }
}

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

#[derive(Default)]
struct RawConfig<'a> {
    keys: Option<Vec<RawKey<'a>>>,
    /// Where the `keys` value lies in the text (for the settings).
    keys_span: Option<Range<usize>>,
    plans: Option<UniqueMap<RawPlan>>,
    rules: Option<Vec<RawRule>>,
    schemes: Option<Vec<String>>,
    key_prefixes: Option<Vec<String>>,
    forward_credential: Option<bool>,
    realm: Option<String>,
    rate_limit_headers: Option<String>,
    case_insensitive_paths: Option<bool>,
    fleet: Option<RawFleet>,
    require_https: Option<bool>,
    trusted_https_header: Option<String>,
    error_doc_url: Option<String>,
}

impl<'a> RawConfig<'a> {
    const FIELDS: [&'static str; 13] = [
        "keys",
        "plans",
        "rules",
        "schemes",
        "key_prefixes",
        "forward_credential",
        "realm",
        "rate_limit_headers",
        "case_insensitive_paths",
        "fleet",
        "require_https",
        "trusted_https_header",
        "error_doc_url",
    ];

    fn read(reader: &mut Reader<'a>) -> Result<Self, JsonError> {
        let mut raw = Self::default();
        fields(
            reader,
            &Path::Root,
            &Self::FIELDS,
            |reader, name, path| match name {
                "keys" => {
                    let start = reader.position();
                    optional(reader, &mut raw.keys, path, |reader, path| {
                        reader.list(path, RawKey::read)
                    })?;
                    raw.keys_span = Some(start..reader.position());
                    Ok(())
                }
                "plans" => optional(reader, &mut raw.plans, path, |reader, path| {
                    UniqueMap::read(reader, path, RawPlan::read)
                }),
                "rules" => optional(reader, &mut raw.rules, path, |reader, path| {
                    reader.list(path, RawRule::read)
                }),
                "schemes" => optional(reader, &mut raw.schemes, path, Reader::strings),
                "key_prefixes" => optional(reader, &mut raw.key_prefixes, path, Reader::strings),
                "forward_credential" => {
                    optional(reader, &mut raw.forward_credential, path, Reader::bool)
                }
                "realm" => optional(reader, &mut raw.realm, path, Reader::string),
                "rate_limit_headers" => {
                    optional(reader, &mut raw.rate_limit_headers, path, Reader::string)
                }
                "case_insensitive_paths" => {
                    optional(reader, &mut raw.case_insensitive_paths, path, Reader::bool)
                }
                "fleet" => optional(reader, &mut raw.fleet, path, RawFleet::read),
                "require_https" => optional(reader, &mut raw.require_https, path, Reader::bool),
                "trusted_https_header" => {
                    optional(reader, &mut raw.trusted_https_header, path, Reader::string)
                }
                "error_doc_url" => optional(reader, &mut raw.error_doc_url, path, Reader::string),
                _ => Err(unknown_field(path, name, &Self::FIELDS)),
            },
        )?;
        Ok(raw)
    }
}

struct RawFleet {
    cluster: String,
    domain: String,
    timeout_ms: Option<u64>,
    on_failure: Option<String>,
}

impl RawFleet {
    const FIELDS: [&'static str; 4] = ["cluster", "domain", "timeout_ms", "on_failure"];

    fn read(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Self, JsonError> {
        let (mut cluster, mut domain, mut timeout_ms, mut on_failure) = (None, None, None, None);
        fields(
            reader,
            path,
            &Self::FIELDS,
            |reader, name, field| match name {
                "cluster" => optional(reader, &mut cluster, field, Reader::string),
                "domain" => optional(reader, &mut domain, field, Reader::string),
                "timeout_ms" => optional(reader, &mut timeout_ms, field, Reader::u64),
                "on_failure" => optional(reader, &mut on_failure, field, Reader::string),
                _ => Err(unknown_field(field, name, &Self::FIELDS)),
            },
        )?;
        Ok(Self {
            cluster: cluster.ok_or_else(|| missing(path, "cluster"))?,
            domain: domain.ok_or_else(|| missing(path, "domain"))?,
            timeout_ms,
            on_failure,
        })
    }
}

/// A key as written; `sha256` and `plan` are only looked at, so they are
/// borrowed from the text rather than copied.
struct RawKey<'a> {
    id: String,
    sha256: Cow<'a, str>,
    tenant: String,
    scopes: Vec<String>,
    plan: Option<Cow<'a, str>>,
    env: Option<String>,
    expires_at: Option<String>,
    revoked: bool,
    name: Option<String>,
    hint: Option<String>,
    /// Extension: when the key was made, for people (the CLI's `list`).
    created_at: Option<String>,
    /// Extension: the id of the key a rotation made to replace this one
    /// (the CLI refuses to rotate a key twice); not looked at otherwise.
    replaced_by: Option<String>,
    rate_limits: UniqueMap<RawLimit>,
}

impl<'a> RawKey<'a> {
    const FIELDS: [&'static str; 13] = [
        "id",
        "sha256",
        "tenant",
        "scopes",
        "plan",
        "env",
        "expires_at",
        "revoked",
        "name",
        "hint",
        "created_at",
        "replaced_by",
        "rate_limits",
    ];

    fn read(reader: &mut Reader<'a>, path: &Path<'_>) -> Result<Self, JsonError> {
        let (mut id, mut sha256, mut tenant, mut scopes) = (None, None, None, None);
        let (mut plan, mut env, mut expires_at, mut revoked) = (None, None, None, None);
        let (mut name, mut hint, mut created_at, mut rate_limits) = (None, None, None, None);
        let mut replaced_by = None;
        fields(
            reader,
            path,
            &Self::FIELDS,
            |reader, field_name, field| match field_name {
                "id" => optional(reader, &mut id, field, Reader::string),
                "sha256" => optional(reader, &mut sha256, field, Reader::text),
                "tenant" => optional(reader, &mut tenant, field, Reader::string),
                "scopes" => optional(reader, &mut scopes, field, Reader::strings),
                "plan" => optional(reader, &mut plan, field, Reader::text),
                "env" => optional(reader, &mut env, field, Reader::string),
                "expires_at" => optional(reader, &mut expires_at, field, Reader::string),
                "revoked" => optional(reader, &mut revoked, field, Reader::bool),
                "name" => optional(reader, &mut name, field, Reader::string),
                "hint" => optional(reader, &mut hint, field, Reader::string),
                "created_at" => optional(reader, &mut created_at, field, Reader::string),
                "replaced_by" => optional(reader, &mut replaced_by, field, Reader::string),
                "rate_limits" => optional(reader, &mut rate_limits, field, |reader, path| {
                    UniqueMap::read(reader, path, RawLimit::read)
                }),
                _ => Err(unknown_field(field, field_name, &Self::FIELDS)),
            },
        )?;
        Ok(Self {
            id: id.ok_or_else(|| missing(path, "id"))?,
            sha256: sha256.ok_or_else(|| missing(path, "sha256"))?,
            tenant: tenant.ok_or_else(|| missing(path, "tenant"))?,
            scopes: scopes.unwrap_or_default(),
            plan,
            env,
            expires_at,
            revoked: revoked.unwrap_or(false),
            name,
            hint,
            created_at,
            replaced_by,
            rate_limits: rate_limits.unwrap_or_default(),
        })
    }
}

struct RawPlan {
    scopes: Option<Vec<String>>,
    rate_limits: UniqueMap<RawLimit>,
}

impl RawPlan {
    const FIELDS: [&'static str; 2] = ["scopes", "rate_limits"];

    fn read(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Self, JsonError> {
        let (mut scopes, mut rate_limits) = (None, None);
        fields(
            reader,
            path,
            &Self::FIELDS,
            |reader, name, field| match name {
                "scopes" => optional(reader, &mut scopes, field, Reader::strings),
                "rate_limits" => optional(reader, &mut rate_limits, field, |reader, path| {
                    UniqueMap::read(reader, path, RawLimit::read)
                }),
                _ => Err(unknown_field(field, name, &Self::FIELDS)),
            },
        )?;
        Ok(Self {
            scopes,
            rate_limits: rate_limits.unwrap_or_default(),
        })
    }
}

struct RawLimit {
    requests: u64,
    period_seconds: u64,
    burst: Option<u64>,
}

impl RawLimit {
    const FIELDS: [&'static str; 3] = ["requests", "period_seconds", "burst"];

    fn read(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Self, JsonError> {
        let (mut requests, mut period_seconds, mut burst) = (None, None, None);
        fields(
            reader,
            path,
            &Self::FIELDS,
            |reader, name, field| match name {
                "requests" => optional(reader, &mut requests, field, Reader::u64),
                "period_seconds" => optional(reader, &mut period_seconds, field, Reader::u64),
                "burst" => optional(reader, &mut burst, field, Reader::u64),
                _ => Err(unknown_field(field, name, &Self::FIELDS)),
            },
        )?;
        Ok(Self {
            requests: requests.ok_or_else(|| missing(path, "requests"))?,
            period_seconds: period_seconds.ok_or_else(|| missing(path, "period_seconds"))?,
            burst,
        })
    }
}

struct RawRule {
    path: Option<String>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    public: bool,
    scope: Option<String>,
}

impl RawRule {
    const FIELDS: [&'static str; 5] = ["path", "path_prefix", "methods", "public", "scope"];

    fn read(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Self, JsonError> {
        let (mut rule_path, mut path_prefix, mut methods, mut public, mut scope) =
            (None, None, None, None, None);
        fields(
            reader,
            path,
            &Self::FIELDS,
            |reader, name, field| match name {
                "path" => optional(reader, &mut rule_path, field, Reader::string),
                "path_prefix" => optional(reader, &mut path_prefix, field, Reader::string),
                "methods" => optional(reader, &mut methods, field, Reader::strings),
                "public" => optional(reader, &mut public, field, Reader::bool),
                "scope" => optional(reader, &mut scope, field, Reader::string),
                _ => Err(unknown_field(field, name, &Self::FIELDS)),
            },
        )?;
        Ok(Self {
            path: rule_path,
            path_prefix,
            methods,
            public: public.unwrap_or(false),
            scope,
        })
    }
}

impl RawConfig<'_> {
    fn validate(self) -> Result<Config, ConfigError> {
        let plans = self
            .plans
            .unwrap_or_default()
            .0
            .into_iter()
            .map(|(name, plan)| plan.validate(name))
            .collect::<Result<Vec<_>, _>>()?;
        if plans.len() > usize::from(PlanIndex::MAX) {
            return Err(refuse("plans", format!("at most {} plans", PlanIndex::MAX)));
        }
        let keys = self
            .keys
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, raw)| raw.validate(index, &plans))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique(&keys)?;
        let fleet = match self.fleet {
            None => None,
            Some(raw) => Some(raw.validate(&plans, &keys)?),
        };
        let case_insensitive_paths = self.case_insensitive_paths.unwrap_or(false);
        let rules = self
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, rule)| rule.validate(&format!("rules[{index}]"), case_insensitive_paths))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            keys,
            plans,
            rules: RuleSet::new(rules, case_insensitive_paths),
            schemes: validate_schemes(self.schemes)?,
            key_prefixes: validate_prefixes(self.key_prefixes)?,
            forward_credential: self.forward_credential.unwrap_or(false),
            realm: validate_realm(self.realm)?,
            fleet,
            https: HttpsPolicy::from_config(self.require_https, self.trusted_https_header)?,
            error_doc_url: match self.error_doc_url {
                None => None,
                Some(template) => Some(
                    DocUrl::parse(&template).map_err(|reason| refuse("error_doc_url", reason))?,
                ),
            },
            rate_limit_headers: match self.rate_limit_headers.as_deref() {
                None | Some("denied") => RateLimitHeaders::Denied,
                Some("always") => RateLimitHeaders::Always,
                Some(other) => {
                    return Err(refuse(
                        "rate_limit_headers",
                        format!("{other:?} is not \"denied\" or \"always\""),
                    ))
                }
            },
        })
    }
}

impl RawFleet {
    /// A fleet needs a cluster and a domain, a bounded timeout, and limits
    /// whose periods the service can count (its units are a second, a
    /// minute, an hour and a day).
    fn validate(self, plans: &[Plan], keys: &[KeySpec]) -> Result<Fleet, ConfigError> {
        let valid_name = |name: &str| {
            !name.is_empty() && name.len() <= MAX_LABEL_LEN && !name.chars().any(char::is_control)
        };
        let cluster_char = |b: u8| b.is_ascii_alphanumeric() || b"_.:-".contains(&b);
        if self.cluster.is_empty()
            || self.cluster.len() > 120
            || !self.cluster.bytes().all(cluster_char)
        {
            return Err(refuse(
                "fleet.cluster",
                "must name an Envoy cluster: 1 to 120 of A-Z a-z 0-9 _ . : -",
            ));
        }
        if !valid_name(&self.domain) {
            return Err(refuse(
                "fleet.domain",
                "must be 1 to 256 bytes without control characters",
            ));
        }
        let timeout_ms = match self.timeout_ms {
            None => 50,
            Some(ms @ 1..=60_000) => ms as u32,
            Some(ms) => {
                return Err(refuse(
                    "fleet.timeout_ms",
                    format!("must be from 1 to 60000, got {ms}"),
                ))
            }
        };
        let on_failure = match self.on_failure.as_deref() {
            None | Some("local") => OnFailure::Local,
            Some("deny") => OnFailure::Deny,
            Some(other) => {
                return Err(refuse(
                    "fleet.on_failure",
                    format!(
                        "{other:?} is not \"local\" or \"deny\" (there is no fail-open choice)"
                    ),
                ))
            }
        };
        let tables = plans
            .iter()
            .map(|plan| {
                (
                    format!("plans.{}.rate_limits", plan.name),
                    &plan.rate_limits,
                )
            })
            .chain(
                keys.iter()
                    .enumerate()
                    .map(|(i, key)| (format!("keys[{i}].rate_limits"), &key.rate_limits)),
            );
        for (field, table) in tables {
            for (pattern, limit) in table.entries() {
                if Unit::of_period(limit.period_seconds).is_none() {
                    return Err(refuse(
                        format!("{field}.{}.period_seconds", pattern.as_str()),
                        format!(
                            "must be 1, 60, 3600 or 86400 with a fleet, got {}",
                            limit.period_seconds
                        ),
                    ));
                }
            }
        }
        Ok(Fleet {
            cluster: self.cluster,
            domain: self.domain,
            timeout_ms,
            on_failure,
        })
    }
}

impl RawPlan {
    fn validate(self, name: String) -> Result<Plan, ConfigError> {
        let field = format!("plans.{name}");
        check_name(&field, &name)?;
        let scopes = match self.scopes {
            None => None,
            Some(scopes) => Some(parse_patterns(&format!("{field}.scopes"), scopes)?),
        };
        let rate_limits = validate_limits(&format!("{field}.rate_limits"), self.rate_limits)?;
        Ok(Plan {
            name,
            scopes,
            rate_limits,
        })
    }
}

impl RawKey<'_> {
    /// Validates the key at `keys[index]`. Field names are rendered only
    /// for a refusal: formatting six of them for each of 1,000,000 keys
    /// cost a large share of a configuration's load.
    fn validate(self, index: usize, plans: &[Plan]) -> Result<KeySpec, ConfigError> {
        let field = &format_args!("keys[{index}]");
        check_id(&format_args!("{field}.id"), &self.id)?;
        let hash = KeyHash::from_hex(&self.sha256)
            .map_err(|reason| refuse(format!("{field}.sha256"), reason))?;
        check_name(&format_args!("{field}.tenant"), &self.tenant)?;
        if self.scopes.len() > MAX_KEY_SCOPES {
            return Err(refuse(
                format!("{field}.scopes"),
                format!(
                    "a key holds at most {MAX_KEY_SCOPES} scopes, got {}",
                    self.scopes.len()
                ),
            ));
        }
        if self.rate_limits.0.len() > MAX_KEY_LIMITS {
            return Err(refuse(
                format!("{field}.rate_limits"),
                format!(
                    "a key has at most {MAX_KEY_LIMITS} entries, got {}",
                    self.rate_limits.0.len()
                ),
            ));
        }
        let scopes = parse_patterns(&format_args!("{field}.scopes"), self.scopes)?;
        let plan = match &self.plan {
            None => None,
            Some(name) => {
                let index = plans
                    .iter()
                    .position(|plan| plan.name == *name)
                    .ok_or_else(|| {
                        refuse(format!("{field}.plan"), format!("unknown plan {name:?}"))
                    })?;
                // Fits: the plan count was checked against PlanIndex::MAX.
                Some(PlanIndex::try_from(index).unwrap_or(PlanIndex::MAX))
            }
        };
        if let Some(env) = &self.env {
            check_name(&format_args!("{field}.env"), env)?;
        }
        let expires_at = match &self.expires_at {
            None => None,
            Some(text) => Some(
                parse_rfc3339(text)
                    .map_err(|reason| refuse(format!("{field}.expires_at"), reason))?,
            ),
        };
        if let Some(text) = &self.created_at {
            parse_rfc3339(text).map_err(|reason| refuse(format!("{field}.created_at"), reason))?;
        }
        if let Some(successor) = &self.replaced_by {
            check_id(&format_args!("{field}.replaced_by"), successor)?;
        }
        for (label, value) in [("name", &self.name), ("hint", &self.hint)] {
            if let Some(value) = value {
                check_label(&format_args!("{field}.{label}"), value)?;
            }
        }
        let rate_limits = validate_limits(&format_args!("{field}.rate_limits"), self.rate_limits)?;
        Ok(KeySpec {
            id: self.id,
            hash,
            tenant: self.tenant,
            scopes,
            plan,
            env: self.env,
            expires_at,
            revoked: self.revoked,
            rate_limits,
        })
    }
}

impl RawRule {
    fn validate(self, field: &str, case_insensitive: bool) -> Result<Rule, ConfigError> {
        let path = match (self.path, self.path_prefix) {
            (Some(_), Some(_)) => {
                return Err(refuse(
                    field,
                    "has both path and path_prefix; give at most one",
                ))
            }
            (Some(exact), None) => {
                rule_path_match(&format!("{field}.path"), &exact, case_insensitive, false)?
            }
            (None, Some(prefix)) => rule_path_match(
                &format!("{field}.path_prefix"),
                &prefix,
                case_insensitive,
                true,
            )?,
            (None, None) => PathMatch::Any,
        };
        if self.public && matches!(path, PathMatch::Tenant { .. }) {
            return Err(refuse(
                field,
                "a public rule cannot hold {tenant}: no key names the tenant",
            ));
        }
        let methods = match self.methods {
            None => None,
            Some(methods) if methods.is_empty() => {
                return Err(refuse(
                    format!("{field}.methods"),
                    "is empty; leave it out to match every method",
                ))
            }
            Some(methods) => {
                for (index, method) in methods.iter().enumerate() {
                    check_method(&format!("{field}.methods[{index}]"), method)?;
                }
                Some(methods)
            }
        };
        let requirement = match (self.public, self.scope) {
            (true, Some(_)) => {
                return Err(refuse(field, "public: true cannot be combined with scope"))
            }
            (true, None) => Requirement::Public,
            (false, scope) => {
                if let Some(scope) = &scope {
                    check_scope_name(scope)
                        .map_err(|reason| refuse(format!("{field}.scope"), reason))?;
                }
                Requirement::Key { scope }
            }
        };
        Ok(Rule {
            path,
            methods,
            requirement,
        })
    }
}

/// The segment of a rule path that matches the key's tenant (§7.3).
const TENANT_SEGMENT: &str = "{tenant}";

/// Compiles a rule's `path` (or, with `prefix`, `path_prefix`), which may
/// hold `{tenant}` as one whole segment, at most once.
fn rule_path_match(
    field: &str,
    text: &str,
    case_insensitive: bool,
    prefix: bool,
) -> Result<PathMatch, ConfigError> {
    let placeholder = |segment: &&str| segment.starts_with('{') || segment.ends_with('}');
    let mut placeholders = text.split('/').filter(placeholder);
    let tenant = match (placeholders.next(), placeholders.next()) {
        (None, _) => None,
        (Some(TENANT_SEGMENT), None) => text.split_once(&format!("/{TENANT_SEGMENT}")),
        (Some(TENANT_SEGMENT), Some(TENANT_SEGMENT)) => {
            return Err(refuse(field, "{tenant} may appear at most once"))
        }
        (Some(TENANT_SEGMENT), Some(other)) | (Some(other), _) => {
            return Err(refuse(
                field,
                format!("{other:?}: the only placeholder is a whole {TENANT_SEGMENT} segment"),
            ))
        }
    };
    let Some((before, after)) = tenant else {
        let stored = rule_path(field, text, case_insensitive)?;
        return Ok(if prefix {
            PathMatch::Prefix(stored)
        } else {
            PathMatch::Exact(stored)
        });
    };
    // `/{tenant}/...`: nothing before the segment but the root.
    let mut before = if before.is_empty() {
        Vec::new()
    } else {
        rule_path(field, before, case_insensitive)?
    };
    before.push(b'/');
    let after = if after.is_empty() {
        Vec::new()
    } else {
        rule_path(field, after, case_insensitive)?
    };
    Ok(PathMatch::Tenant {
        before,
        after,
        prefix,
    })
}

/// A rule path must be a canonical absolute path with no query or
/// parameters; it is stored without its trailing `/` and folded when paths
/// are case-insensitive.
fn rule_path(field: &str, text: &str, case_insensitive: bool) -> Result<Vec<u8>, ConfigError> {
    if text.contains('?') {
        return Err(refuse(field, "a rule path has no query string"));
    }
    // Rules compare request paths with their parameters removed (contract
    // §7.1), so a rule path holding one could never match.
    if text.contains(';') {
        return Err(refuse(
            field,
            "a rule path has no `;` parameters (rules compare paths without them)",
        ));
    }
    let normalised =
        path::normalise(text.as_bytes()).map_err(|error| refuse(field, error.reason()))?;
    // Such a path is refused on requests (see RuleSet::route), so the
    // rule could never match.
    if case_insensitive && crate::rules::holds_non_ascii(&normalised.path) {
        return Err(refuse(
            field,
            "holds a character above ASCII, and paths compare case-insensitively",
        ));
    }
    let mut stored = crate::rules::stored_form(&normalised.path);
    if case_insensitive {
        stored.make_ascii_lowercase();
    }
    Ok(stored)
}

/// Methods are upper-case RFC 9110 tokens, compared exactly.
fn check_method(field: &str, method: &str) -> Result<(), ConfigError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(refuse(
            field,
            format!("{method:?} is not an HTTP method token"),
        ));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(refuse(
            field,
            format!("{method:?} must be upper case (methods compare exactly)"),
        ));
    }
    Ok(())
}

/// Refuses a key id or hash given twice, naming the second.
fn check_unique(keys: &[KeySpec]) -> Result<(), ConfigError> {
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

fn check_id(field: &dyn fmt::Display, id: &str) -> Result<(), ConfigError> {
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
fn check_name(field: &dyn fmt::Display, name: &str) -> Result<(), ConfigError> {
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
fn check_label(field: &dyn fmt::Display, label: &str) -> Result<(), ConfigError> {
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

fn parse_patterns(
    field: &dyn fmt::Display,
    texts: Vec<String>,
) -> Result<Vec<ScopePattern>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            ScopePattern::parse(text).map_err(|reason| refuse(format!("{field}[{index}]"), reason))
        })
        .collect()
}

fn validate_limits(
    field: &dyn fmt::Display,
    raw: UniqueMap<RawLimit>,
) -> Result<LimitTable, ConfigError> {
    let mut entries = Vec::with_capacity(raw.0.len());
    for (pattern, limit) in raw.0 {
        let field = format!("{field}.{pattern}");
        let pattern = ScopePattern::parse(&pattern).map_err(|reason| refuse(&field, reason))?;
        entries.push((pattern, limit.validate(&field)?));
    }
    Ok(LimitTable::new(entries))
}

impl RawLimit {
    fn validate(self, field: &str) -> Result<Limit, ConfigError> {
        let in_range = |name: &str, value: u64, max: u64| {
            if value == 0 || value > max {
                Err(refuse(
                    format!("{field}.{name}"),
                    format!("must be from 1 to {max}, got {value}"),
                ))
            } else {
                Ok(value)
            }
        };
        let requests = in_range("requests", self.requests, MAX_REQUESTS)?;
        let period_seconds = in_range("period_seconds", self.period_seconds, MAX_PERIOD_SECONDS)?;
        let burst = in_range("burst", self.burst.unwrap_or(requests), MAX_REQUESTS)?;
        Ok(Limit {
            requests,
            period_seconds,
            burst,
        })
    }
}

fn validate_schemes(raw: Option<Vec<String>>) -> Result<Schemes, ConfigError> {
    let Some(names) = raw else {
        return Ok(Schemes::ALL);
    };
    if names.is_empty() {
        return Err(refuse(
            "schemes",
            "is empty; leave it out to accept all three",
        ));
    }
    let mut schemes = Schemes::NONE;
    for (index, name) in names.iter().enumerate() {
        let scheme = Scheme::from_config_name(name).ok_or_else(|| {
            refuse(
                format!("schemes[{index}]"),
                format!("unknown scheme {name:?} (bearer, apikey, x-api-key)"),
            )
        })?;
        schemes = schemes.with(scheme);
    }
    Ok(schemes)
}

fn validate_prefixes(raw: Option<Vec<String>>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(prefixes) = raw else { return Ok(None) };
    if prefixes.is_empty() {
        return Err(refuse(
            "key_prefixes",
            "is empty; leave it out to accept any key",
        ));
    }
    for (index, prefix) in prefixes.iter().enumerate() {
        let valid = |b: u8| (0x21..=0x7E).contains(&b) && b != b',';
        if prefix.is_empty()
            || prefix.len() >= crate::credentials::MAX_KEY_LEN
            || !prefix.bytes().all(valid)
        {
            return Err(refuse(
                format!("key_prefixes[{index}]"),
                format!("{prefix:?} can never start a key (visible ASCII, no comma, shorter than a key)"),
            ));
        }
    }
    Ok(Some(prefixes))
}

/// The realm is written inside a quoted string: visible ASCII without `"`
/// or `\`.
fn validate_realm(raw: Option<String>) -> Result<String, ConfigError> {
    let Some(realm) = raw else {
        return Ok("api".to_owned());
    };
    let valid = |b: u8| matches!(b, 0x20..=0x7E) && b != b'"' && b != b'\\';
    if realm.is_empty() || realm.len() > MAX_LABEL_LEN || !realm.bytes().all(valid) {
        return Err(refuse(
            "realm",
            "must be 1 to 256 printable ASCII characters without \" or \\",
        ));
    }
    Ok(realm)
}

#[cfg(test)]
mod tests;
