//! Validation of the document as written into a [`Config`]: defaults
//! applied, every value checked and compiled (hashes decoded, plans named
//! by index, limits and rules ready for the request path). The first
//! problem refuses the whole configuration, naming its field.

use super::checks::{check_id, check_label, check_name, check_unique, parse_patterns, required};
use super::document::{Entries, RawConfig, RawFleet, RawKey, RawKeySource, RawLimit, RawPlan};
use super::strict::Text;
use super::{
    refuse, Config, ConfigError, KeySpec, Plan, PlanIndex, RateLimitHeaders, MAX_KEY_LIMITS,
    MAX_KEY_SCOPES, MAX_LABEL_LEN,
};
use crate::credentials::{Scheme, Schemes, MAX_KEY_LEN};
use crate::denial::DocUrl;
use crate::fleet::{Fleet, OnFailure};
use crate::https::HttpsPolicy;
use crate::key_hash::KeyHash;
use crate::key_source::KeySource;
use crate::rate_limit::{Limit, LimitTable, MAX_PERIOD_SECONDS, MAX_REQUESTS};
use crate::rls_codec::Unit;
use crate::rules::RuleSet;
use crate::scope::ScopePattern;
use crate::timestamp::parse_rfc3339;

impl RawConfig<'_> {
    /// Plans first (keys name them), then keys, the fleet (which checks
    /// every limit's period) and rules.
    pub(super) fn validate(mut self) -> Result<Config, ConfigError> {
        let key_source = match self.key_source.take() {
            None => None,
            Some(raw) => Some(self.validate_key_source(raw)?),
        };
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
        // A gateway following the key service applies its own fleet to
        // every table it takes (key_source::with_gateway_fleet).
        let key_source = key_source.map(|source| KeySource {
            fleet: fleet.clone(),
            ..source
        });
        let case_insensitive_paths = self.case_insensitive_paths.unwrap_or(false);
        let rules = self
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, rule)| rule.validate(&format!("rules[{index}]"), case_insensitive_paths))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            key_source,
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

impl RawConfig<'_> {
    /// With `key_source`, the configuration holds only it and `fleet`
    /// (contract §8.3): everything else comes from the key service, so a
    /// field beside it would be silently ignored; it is refused instead.
    fn validate_key_source(&self, raw: RawKeySource) -> Result<KeySource, ConfigError> {
        let beside = [
            ("keys", self.keys.is_some()),
            ("plans", self.plans.is_some()),
            ("rules", self.rules.is_some()),
            ("schemes", self.schemes.is_some()),
            ("key_prefixes", self.key_prefixes.is_some()),
            ("forward_credential", self.forward_credential.is_some()),
            ("realm", self.realm.is_some()),
            ("rate_limit_headers", self.rate_limit_headers.is_some()),
            (
                "case_insensitive_paths",
                self.case_insensitive_paths.is_some(),
            ),
            ("require_https", self.require_https.is_some()),
            ("trusted_https_header", self.trusted_https_header.is_some()),
            ("error_doc_url", self.error_doc_url.is_some()),
        ];
        if let Some((name, _)) = beside.iter().find(|(_, given)| *given) {
            return Err(refuse(
                *name,
                "not allowed beside `key_source`: settings and keys come from the key service",
            ));
        }
        let cluster = required(raw.cluster, &"key_source", "cluster")?;
        if !valid_cluster(&cluster) {
            return Err(refuse("key_source.cluster", CLUSTER_RULE));
        }
        let token = required(raw.token, &"key_source", "token")?;
        if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            // The token itself is never echoed: it is a credential.
            return Err(refuse(
                "key_source.token",
                "must be 1 to 1024 visible ASCII characters",
            ));
        }
        let authority = match raw.authority {
            Some(authority) => authority,
            // Istio's cluster names (`outbound|8470||host`) are no host
            // name: say what to do rather than refuse a field not given.
            None if cluster.contains('|') => return Err(refuse(
                "key_source.authority",
                "required when `cluster` is not a host name (as Istio's outbound|<port>||<host>)",
            )),
            None => cluster.clone(),
        };
        let authority_char = |b: u8| b.is_ascii_alphanumeric() || b"_.:-[]".contains(&b);
        if authority.is_empty() || authority.len() > 255 || !authority.bytes().all(authority_char) {
            return Err(refuse(
                "key_source.authority",
                "must be a host name (and port): 1 to 255 of A-Z a-z 0-9 _ . : - [ ]",
            ));
        }
        // The fleet, validated with the rest, is set in `validate`.
        Ok(KeySource {
            cluster,
            token,
            authority,
            fleet: None,
        })
    }
}

/// What [`valid_cluster`] accepts, as a refusal says it.
const CLUSTER_RULE: &str = "must name an Envoy cluster: 1 to 120 of A-Z a-z 0-9 _ . : - |";

/// Envoy cluster names as the filter accepts them. `|` is in the set
/// because Istio names a service's cluster
/// `outbound|<port>||<service>.<namespace>.svc.cluster.local`, the only
/// name a `WasmPlugin` can give `key_source` or `fleet`. At most 120 bytes
/// because a fleet's gRPC call serialises the name with one-byte lengths
/// (the filter's `grpc_service_for_cluster`).
fn valid_cluster(cluster: &str) -> bool {
    let cluster_char = |b: u8| b.is_ascii_alphanumeric() || b"_.:-|".contains(&b);
    !cluster.is_empty() && cluster.len() <= 120 && cluster.bytes().all(cluster_char)
}

impl RawKey<'_> {
    /// Validates the key at `keys[index]`. Field names are rendered only
    /// for a refusal (see [`super::checks`]).
    fn validate(self, index: usize, plans: &[Plan]) -> Result<KeySpec, ConfigError> {
        let field = &format_args!("keys[{index}]");
        let id = required(self.id, field, "id")?;
        let sha256 = required(self.sha256, field, "sha256")?;
        let tenant = required(self.tenant, field, "tenant")?;
        check_id(&format_args!("{field}.id"), &id)?;
        let hash = KeyHash::from_hex(&sha256)
            .map_err(|reason| refuse(format!("{field}.sha256"), reason))?;
        check_name(&format_args!("{field}.tenant"), &tenant)?;
        let scopes = self.scopes.unwrap_or_default();
        if scopes.len() > MAX_KEY_SCOPES {
            return Err(refuse(
                format!("{field}.scopes"),
                format!(
                    "a key holds at most {MAX_KEY_SCOPES} scopes, got {}",
                    scopes.len()
                ),
            ));
        }
        let limits = self.rate_limits.unwrap_or_default();
        if limits.0.len() > MAX_KEY_LIMITS {
            return Err(refuse(
                format!("{field}.rate_limits"),
                format!(
                    "a key has at most {MAX_KEY_LIMITS} entries, got {}",
                    limits.0.len()
                ),
            ));
        }
        let scopes = parse_patterns(&format_args!("{field}.scopes"), &scopes)?;
        let plan = match &self.plan {
            None => None,
            Some(name) => {
                let index = plans
                    .iter()
                    .position(|plan| plan.name == **name)
                    .ok_or_else(|| {
                        refuse(
                            format!("{field}.plan"),
                            format!("unknown plan {:?}", &**name),
                        )
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
        let rate_limits = validate_limits(&format_args!("{field}.rate_limits"), limits)?;
        Ok(KeySpec {
            id,
            hash,
            tenant,
            scopes,
            plan,
            env: self.env,
            expires_at,
            revoked: self.revoked.unwrap_or(false),
            rate_limits,
        })
    }
}

impl RawPlan<'_> {
    fn validate(self, name: String) -> Result<Plan, ConfigError> {
        let field = format!("plans.{name}");
        check_name(&field, &name)?;
        let scopes = match self.scopes {
            None => None,
            Some(scopes) => Some(parse_patterns(&format_args!("{field}.scopes"), &scopes)?),
        };
        let rate_limits = validate_limits(
            &format_args!("{field}.rate_limits"),
            self.rate_limits.unwrap_or_default(),
        )?;
        Ok(Plan {
            name,
            scopes,
            rate_limits,
        })
    }
}

/// A `rate_limits` object: scope pattern → limit.
fn validate_limits(
    field: &dyn core::fmt::Display,
    raw: Entries<Text<'_>, RawLimit>,
) -> Result<LimitTable, ConfigError> {
    let mut entries = Vec::with_capacity(raw.0.len());
    for (pattern, limit) in raw.0 {
        let field = format!("{field}.{}", &*pattern);
        let pattern = ScopePattern::parse(&pattern).map_err(|reason| refuse(&field, reason))?;
        entries.push((pattern, limit.validate(&field)?));
    }
    Ok(LimitTable::new(entries))
}

impl RawLimit {
    /// `burst` defaults to `requests`; all three are bounded.
    fn validate(self, field: &str) -> Result<Limit, ConfigError> {
        let requests = required(self.requests, &field, "requests")?;
        let period_seconds = required(self.period_seconds, &field, "period_seconds")?;
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
        let requests = in_range("requests", requests, MAX_REQUESTS)?;
        let period_seconds = in_range("period_seconds", period_seconds, MAX_PERIOD_SECONDS)?;
        let burst = in_range("burst", self.burst.unwrap_or(requests), MAX_REQUESTS)?;
        Ok(Limit {
            requests,
            period_seconds,
            burst,
        })
    }
}

impl RawFleet<'_> {
    /// A fleet needs a cluster and a domain, a bounded timeout, and limits
    /// whose periods the service can count (its units are a second, a
    /// minute, an hour and a day).
    fn validate(self, plans: &[Plan], keys: &[KeySpec]) -> Result<Fleet, ConfigError> {
        let cluster = required(self.cluster, &"fleet", "cluster")?;
        let domain = required(self.domain, &"fleet", "domain")?;
        let valid_name = |name: &str| {
            !name.is_empty() && name.len() <= MAX_LABEL_LEN && !name.chars().any(char::is_control)
        };
        if !valid_cluster(&cluster) {
            return Err(refuse("fleet.cluster", CLUSTER_RULE));
        }
        if !valid_name(&domain) {
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
            check_fleet_periods(&field, table)?;
        }
        Ok(Fleet {
            cluster,
            domain,
            timeout_ms,
            on_failure,
        })
    }
}

/// A fleet's service counts per second, minute, hour and day: every limit
/// of `table` (at `field`) must use one of those periods.
pub(crate) fn check_fleet_periods(field: &str, table: &LimitTable) -> Result<(), ConfigError> {
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
    Ok(())
}

impl Config {
    /// Validates one key object (a line of the key service's feed) against
    /// this configuration's plans and fleet, exactly as it would be checked
    /// at `keys[0]` of a whole configuration.
    pub fn parse_key(&self, text: &[u8]) -> Result<KeySpec, ConfigError> {
        let key = super::strict::read::<RawKey<'_>>(text)?.validate(0, &self.plans)?;
        if self.fleet.is_some() {
            check_fleet_periods("keys[0].rate_limits", &key.rate_limits)?;
        }
        Ok(key)
    }
}

fn validate_schemes(raw: Option<Vec<Text<'_>>>) -> Result<Schemes, ConfigError> {
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
                format!("unknown scheme {:?} (bearer, apikey, x-api-key)", &**name),
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
        if prefix.is_empty() || prefix.len() >= MAX_KEY_LEN || !prefix.bytes().all(valid) {
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
