//! The key record: what the shared key table stores for each key hash.
//!
//! Records live once per Envoy process in proxy-wasm shared data, so they
//! are compact bytes, written once per configuration and read on every
//! request. A record carries everything the request path needs about its
//! key (identity header values precomputed, held scopes, own limits) and
//! the generation of the table it belongs to, so a record left behind by an
//! older table is recognised and ignored. Decoding checks every length and
//! never panics: shared data is trusted, but not blindly. A record is
//! decoded once per worker and configuration (the `key_cache` keeps it),
//! straight into the [`KeyRecord`] the request path reads.
//!
//! Every length and count is written whole, as a LEB128 number (one byte
//! below 128, so a typical record is smaller than with fixed `u16`s), so
//! no field can be cut short. Format 1 wrote `u16`s and saturated longer
//! values: a key whose effective scopes made `x-api-scopes` longer than
//! 65,535 bytes was written and then never decoded, answering
//! `invalid_key` (issue 17, finding 5). The configuration bounds what one
//! key holds (256 scopes, 64 limits, 128-byte names and patterns, a 64-byte
//! id): with that, a record is at most about 45 KB plus its `x-api-scopes`
//! value, which a plan can widen (key `b:*` on a plan granting many `b:`
//! names) but which is written whole at any length.

use crate::config::{KeySpec, Plan, PlanIndex};
use crate::rate_limit::{Limit, LimitTable};
use crate::scope::{effective_scopes, ScopePattern};
use crate::store::cursor::{Reader, Writer};
use crate::timestamp::UnixNanos;

/// 2: LEB128 lengths and counts (1 wrote saturating `u16`s).
const FORMAT_VERSION: u8 = 2;
const REVOKED: u8 = 1;
const HAS_EXPIRY: u8 = 2;
const HAS_PLAN: u8 = 4;
const HAS_ENV: u8 = 8;

/// A key as the table holds it: what a request needs about its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The table generation that wrote it.
    pub generation: u64,
    /// Whether the key was revoked.
    pub revoked: bool,
    /// When it expires.
    pub expires_at: Option<UnixNanos>,
    /// Its plan, an index into the configuration's plans.
    pub plan: Option<PlanIndex>,
    /// `x-api-key-id`.
    pub id: String,
    /// `x-api-tenant`.
    pub tenant: String,
    /// `x-api-env`.
    pub env: Option<String>,
    /// `x-api-scopes`: effective scopes, space separated.
    pub scopes_header: String,
    /// Held scope patterns.
    pub held: Vec<ScopePattern>,
    /// The key's own limits.
    pub limits: LimitTable,
}

impl KeyRecord {
    /// Whether a held pattern matches `scope`.
    pub fn holds(&self, scope: &str) -> bool {
        self.held.iter().any(|pattern| pattern.matches(scope))
    }
}

/// Encodes the record of `key` for table `generation`. `plans` resolves the
/// key's plan to compute its effective scopes.
pub fn encode(key: &KeySpec, plans: &[Plan], generation: u64) -> Vec<u8> {
    let granted = key
        .plan
        .and_then(|index| plans.get(usize::from(index)))
        .and_then(|plan| plan.scopes.as_deref());
    let effective = effective_scopes(&key.scopes, granted);
    let scopes_header = effective
        .iter()
        .map(ScopePattern::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let mut flags = 0;
    if key.revoked {
        flags |= REVOKED;
    }
    if key.expires_at.is_some() {
        flags |= HAS_EXPIRY;
    }
    if key.plan.is_some() {
        flags |= HAS_PLAN;
    }
    if key.env.is_some() {
        flags |= HAS_ENV;
    }
    let mut out =
        Writer::with_capacity(64 + key.id.len() + key.tenant.len() + scopes_header.len() * 2);
    out.u8(FORMAT_VERSION).u64(generation).u8(flags);
    if let Some(expires_at) = key.expires_at {
        out.bytes(&expires_at.to_le_bytes());
    }
    if let Some(plan) = key.plan {
        out.u16(plan);
    }
    out.str(&key.id).str(&key.tenant);
    if let Some(env) = &key.env {
        out.str(env);
    }
    out.str(&scopes_header).count(key.scopes.len());
    for pattern in &key.scopes {
        out.str(pattern.as_str());
    }
    out.count(key.rate_limits.entries().len());
    for (pattern, limit) in key.rate_limits.entries() {
        out.str(pattern.as_str())
            .u64(limit.requests)
            .u64(limit.period_seconds)
            .u64(limit.burst);
    }
    out.finish()
}

/// Decodes a record; `None` when the bytes are not a record of this format
/// (or hold a pattern that does not parse, which this module never writes:
/// such a key is absent rather than half-read).
pub fn decode(bytes: &[u8]) -> Option<KeyRecord> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != FORMAT_VERSION {
        return None;
    }
    let generation = reader.u64()?;
    let flags = reader.u8()?;
    let expires_at = if flags & HAS_EXPIRY != 0 {
        Some(i64::from_le_bytes(reader.array()?))
    } else {
        None
    };
    let plan = if flags & HAS_PLAN != 0 {
        Some(reader.u16()?)
    } else {
        None
    };
    let id = reader.str()?;
    let tenant = reader.str()?;
    let env = if flags & HAS_ENV != 0 {
        Some(reader.str()?)
    } else {
        None
    };
    let scopes_header = reader.str()?;
    let held_count = reader.count()?;
    // Each pattern takes at least one byte: a count beyond what is left
    // is refused before anything is allocated for it.
    if held_count > reader.remaining() {
        return None;
    }
    let held = (0..held_count)
        .map(|_| pattern(&mut reader))
        .collect::<Option<Vec<_>>>()?;
    let limits_count = reader.count()?;
    if limits_count > reader.remaining() {
        return None;
    }
    let limits = (0..limits_count)
        .map(|_| {
            let pattern = pattern(&mut reader)?;
            let limit = Limit {
                requests: reader.u64()?,
                period_seconds: reader.u64()?,
                burst: reader.u64()?,
            };
            Some((pattern, limit))
        })
        .collect::<Option<Vec<_>>>()?;
    reader.is_empty().then(|| KeyRecord {
        generation,
        revoked: flags & REVOKED != 0,
        expires_at,
        plan,
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        env: env.map(str::to_owned),
        scopes_header: scopes_header.to_owned(),
        held,
        limits: LimitTable::new(limits),
    })
}

fn pattern(reader: &mut Reader<'_>) -> Option<ScopePattern> {
    ScopePattern::parse(reader.str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn held(record: &KeyRecord) -> Vec<&str> {
        record.held.iter().map(ScopePattern::as_str).collect()
    }

    fn limits(record: &KeyRecord) -> Vec<(&str, Limit)> {
        let entries = record.limits.entries().iter();
        entries.map(|(p, limit)| (p.as_str(), *limit)).collect()
    }

    fn config() -> Config {
        let text = r#"{
          "keys": [{"id": "k1", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "tenant": "acme", "scopes": ["*", "admin"], "plan": "crm", "env": "live",
                    "expires_at": "2027-01-31T00:00:00Z", "revoked": true,
                    "rate_limits": {"crm:write": {"requests": 5, "period_seconds": 1, "burst": 2}}},
                   {"id": "k2", "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
                    "tenant": "t"}],
          "plans": {"crm": {"scopes": ["crm:*"]}}
        }"#;
        Config::parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_full_record_round_trips() {
        let config = config();
        let bytes = encode(&config.keys[0], &config.plans, 42);
        let record = decode(&bytes).unwrap();
        assert_eq!(record.generation, 42);
        assert!(record.revoked);
        assert_eq!(record.expires_at, config.keys[0].expires_at);
        assert_eq!(record.plan, Some(0));
        assert_eq!(
            (
                record.id.as_str(),
                record.tenant.as_str(),
                record.env.as_deref()
            ),
            ("k1", "acme", Some("live"))
        );
        assert_eq!(
            record.scopes_header, "crm:*",
            "key * narrowed by plan crm:*; admin not granted"
        );
        assert_eq!(held(&record), ["*", "admin"]);
        assert_eq!(
            limits(&record),
            [(
                "crm:write",
                Limit {
                    requests: 5,
                    period_seconds: 1,
                    burst: 2
                }
            )]
        );
        assert!(record.holds("crm:read"), "held * does not hold crm:read");
    }

    #[test]
    fn a_minimal_record_round_trips() {
        let config = config();
        let record_bytes = encode(&config.keys[1], &config.plans, 7);
        let record = decode(&record_bytes).unwrap();
        assert_eq!(
            (
                record.revoked,
                record.expires_at,
                record.plan,
                record.env.as_deref()
            ),
            (false, None, None, None)
        );
        assert_eq!(record.scopes_header, "");
        assert!(record.held.is_empty());
        assert!(!record.holds("*"), "a key holding nothing holds *");
    }

    /// Issue 17, finding 5: a key whose effective scopes made an
    /// `x-api-scopes` value longer than 65,535 bytes was written with a
    /// truncated length and never decoded again (it answered
    /// `invalid_key`). A key at every maximum the configuration allows
    /// must come back whole.
    #[test]
    fn a_key_at_every_maximum_round_trips() {
        use crate::config::{
            MAX_ID_LEN, MAX_KEY_LIMITS, MAX_KEY_SCOPES, MAX_LABEL_LEN, MAX_NAME_LEN,
        };
        use crate::rate_limit::{MAX_PERIOD_SECONDS, MAX_REQUESTS};
        use crate::scope::MAX_SCOPE_LEN;
        let long = |prefix: &str, i: usize| {
            format!(
                "{prefix}{i:03}{}",
                "x".repeat(MAX_SCOPE_LEN - prefix.len() - 3)
            )
        };
        // Held: `b:*` and 255 long `a:` names; the plan grants `a:*` and
        // 256 long `b:` names, so 511 long names are effective.
        let held: Vec<String> = std::iter::once("b:*".to_owned())
            .chain((1..MAX_KEY_SCOPES).map(|i| long("a:", i)))
            .collect();
        let granted: Vec<String> = std::iter::once("a:*".to_owned())
            .chain((0..256).map(|i| long("b:", i)))
            .collect();
        let limit = serde_json::json!({
            "requests": MAX_REQUESTS, "period_seconds": MAX_PERIOD_SECONDS, "burst": MAX_REQUESTS
        });
        let limits: serde_json::Map<String, serde_json::Value> = (0..MAX_KEY_LIMITS)
            .map(|i| (long("l:", i), limit.clone()))
            .collect();
        let name_128 = "\u{e9}".repeat(MAX_NAME_LEN / 2);
        let plan_name = "p".repeat(MAX_NAME_LEN);
        let document = serde_json::json!({
            "keys": [{
                "id": "i".repeat(MAX_ID_LEN),
                "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "tenant": name_128, "env": "e".repeat(MAX_NAME_LEN), "plan": plan_name,
                "scopes": held, "rate_limits": limits,
                "expires_at": "9999-12-31T23:59:59.999999999Z", "revoked": true,
                "name": "n".repeat(MAX_LABEL_LEN), "hint": "h".repeat(MAX_LABEL_LEN),
            }],
            "plans": { plan_name.clone(): { "scopes": granted } },
        });
        let config = Config::parse(document.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("the maximal key is refused: {e}"))
            .unwrap();
        let key = &config.keys[0];
        let bytes = encode(key, &config.plans, u64::MAX);
        let record = decode(&bytes)
            .unwrap_or_else(|| panic!("a record of {} bytes does not decode", bytes.len()));
        assert_eq!(record.generation, u64::MAX);
        assert!(record.revoked);
        assert_eq!(record.expires_at, key.expires_at);
        assert_eq!(record.plan, Some(0));
        assert_eq!((&record.id, &record.tenant), (&key.id, &key.tenant));
        assert_eq!(record.env, key.env);
        let effective: Vec<&str> = record.scopes_header.split(' ').collect();
        assert_eq!(effective.len(), 511, "effective scopes in x-api-scopes");
        assert!(
            record.scopes_header.len() > usize::from(u16::MAX),
            "the test must cross 64 KiB: {} bytes",
            record.scopes_header.len()
        );
        assert_eq!(record.held, key.scopes);
        assert_eq!(record.limits, key.rate_limits);
        let rest = bytes.len() - record.scopes_header.len();
        assert!(
            rest <= 45_000,
            "beside x-api-scopes the record takes {rest} bytes, more than the documented 45 KB"
        );
    }

    #[test]
    fn a_record_holding_a_pattern_that_does_not_parse_is_absent() {
        let mut out = Writer::default();
        out.u8(FORMAT_VERSION).u64(1).u8(0);
        out.str("k")
            .str("t")
            .str("le*ds")
            .count(1)
            .str("le*ds")
            .count(0);
        assert_eq!(decode(&out.finish()), None, "a half-read key was served");
    }

    #[test]
    fn truncated_extended_or_foreign_bytes_do_not_decode() {
        let config = config();
        let bytes = encode(&config.keys[0], &config.plans, 1);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_none(),
                "decoded a record cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        let mut other_version = bytes;
        other_version[0] = 9;
        assert!(decode(&other_version).is_none());
    }
}
