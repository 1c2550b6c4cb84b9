//! Rate limits and how a request picks the one it counts against.
//!
//! A limit is a token bucket: capacity `burst`, refilled at
//! `requests / period_seconds` tokens per second. Keys and plans map scope
//! patterns to limits; a request counts against the most specific pattern
//! that matches its required scope in the key's own table, and only when
//! none matches there, in its plan's (contract §1).

use crate::scope::ScopePattern;

/// Bounds that keep the bucket arithmetic exact (see `token_bucket`).
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// The longest period: a year and a day.
pub const MAX_PERIOD_SECONDS: u64 = 366 * 86_400;

/// One token-bucket limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Tokens added per period.
    pub requests: u64,
    /// The period, in seconds.
    pub period_seconds: u64,
    /// Bucket capacity (defaults to `requests`).
    pub burst: u64,
}

/// The scope a request without a required scope counts against.
pub const NO_SCOPE: &str = "*";

/// Scope patterns mapped to limits, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitTable {
    entries: Vec<(ScopePattern, Limit)>,
}

impl LimitTable {
    /// Builds a table; the caller has refused duplicate patterns.
    pub fn new(entries: Vec<(ScopePattern, Limit)>) -> Self {
        Self { entries }
    }

    /// Whether the table has no limits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in configuration order.
    pub fn entries(&self) -> &[(ScopePattern, Limit)] {
        &self.entries
    }

    /// The most specific entry matching `scope` (`None` = the request needs
    /// no scope, which counts against `*` only).
    pub fn select(&self, scope: Option<&str>) -> Option<&(ScopePattern, Limit)> {
        match scope {
            None => self
                .entries
                .iter()
                .find(|(pattern, _)| pattern.as_str() == NO_SCOPE),
            Some(scope) => self
                .entries
                .iter()
                .filter(|(pattern, _)| pattern.matches(scope))
                .max_by_key(|(pattern, _)| pattern.specificity()),
        }
    }
}

/// The limit a request counts against: the key's own table first, then its
/// plan's. `None` means the request is not limited.
pub fn select<'t>(
    key_limits: &'t LimitTable,
    plan_limits: Option<&'t LimitTable>,
    scope: Option<&str>,
) -> Option<&'t (ScopePattern, Limit)> {
    key_limits
        .select(scope)
        .or_else(|| plan_limits.and_then(|plan| plan.select(scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn table(patterns: &[(&str, u64)]) -> LimitTable {
        LimitTable::new(
            patterns
                .iter()
                .map(|(p, n)| {
                    (
                        ScopePattern::parse(p).unwrap(),
                        Limit {
                            requests: *n,
                            period_seconds: 60,
                            burst: *n,
                        },
                    )
                })
                .collect(),
        )
    }

    fn chosen(key: &LimitTable, plan: Option<&LimitTable>, scope: Option<&str>) -> Option<String> {
        select(key, plan, scope).map(|(p, _)| p.as_str().to_owned())
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let plan = table(&[
            ("*", 1),
            ("leads:*", 2),
            ("leads:read", 3),
            ("leads:sub:*", 4),
        ]);
        let none = LimitTable::default();
        let cases = [
            (Some("leads:read"), Some("leads:read")),
            (Some("leads:write"), Some("leads:*")),
            (Some("leads:sub:x"), Some("leads:sub:*")),
            (Some("mcp:x"), Some("*")),
            (None, Some("*")),
        ];
        for (scope, expected) in cases {
            assert_eq!(
                chosen(&none, Some(&plan), scope).as_deref(),
                expected,
                "scope {scope:?}"
            );
        }
    }

    #[test]
    fn the_keys_own_table_is_searched_before_the_plans() {
        let plan = table(&[("leads:read", 600)]);
        let key = table(&[("*", 10)]);
        assert_eq!(
            chosen(&key, Some(&plan), Some("leads:read")).as_deref(),
            Some("*")
        );
        let key = table(&[("leads:write", 10)]);
        assert_eq!(
            chosen(&key, Some(&plan), Some("leads:read")).as_deref(),
            Some("leads:read")
        );
    }

    #[test]
    fn a_request_with_no_scope_counts_against_star_only() {
        let plan = table(&[("leads:*", 1)]);
        assert_eq!(chosen(&LimitTable::default(), Some(&plan), None), None);
        assert_eq!(chosen(&LimitTable::default(), None, Some("x")), None);
    }
}
