//! Scope names and scope patterns.
//!
//! A scope is a name such as `leads:read`. A pattern is a name, `prefix:*`
//! (every scope that starts with `prefix:`) or `*` (every scope). Keys hold
//! patterns, plans grant patterns and rate limits are keyed by patterns; a
//! rule requires a plain name. Patterns are parsed once at configuration
//! time so matching is a prefix comparison.

use core::fmt;

/// The longest scope name or pattern accepted.
pub const MAX_SCOPE_LEN: usize = 128;

/// A parsed scope pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScopePattern {
    text: String,
    kind: PatternKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum PatternKind {
    /// Matches exactly one name.
    Exact,
    /// `prefix:*`: matches names that start with `prefix:` (the text minus `*`).
    Prefix,
    /// `*`: matches every name.
    All,
}

/// How specific a pattern is, for choosing a rate limit: an exact name beats
/// the longest `prefix:*`, which beats `*`. Larger is more specific.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Specificity(u32);

impl ScopePattern {
    /// Parses a pattern: 1–128 characters of an RFC 6750 `scope-token`
    /// (visible ASCII but `"` and `\`), with `*` only alone or as the last
    /// segment after `:`.
    pub fn parse(text: &str) -> Result<Self, String> {
        check_scope_chars(text)?;
        let kind = if text == "*" {
            PatternKind::All
        } else if let Some(prefix) = text.strip_suffix(":*") {
            if prefix.contains('*') {
                return Err(format!(
                    "{text:?}: `*` may stand only alone or as the last segment after `:`"
                ));
            }
            PatternKind::Prefix
        } else if text.contains('*') {
            return Err(format!(
                "{text:?}: `*` may stand only alone or as the last segment after `:`"
            ));
        } else {
            PatternKind::Exact
        };
        Ok(Self {
            text: text.to_owned(),
            kind,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this pattern matches the scope `name`.
    pub fn matches(&self, name: &str) -> bool {
        match self.kind {
            PatternKind::All => true,
            PatternKind::Exact => self.text == name,
            PatternKind::Prefix => name.starts_with(self.prefix()),
        }
    }

    /// The patterns both `self` and `other` match, when that set is itself a
    /// pattern (it always is: one contains the other, or they are disjoint).
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        if other.covers(self) {
            Some(self.clone())
        } else if self.covers(other) {
            Some(other.clone())
        } else {
            None
        }
    }

    /// How specific the pattern is; see [`Specificity`].
    pub fn specificity(&self) -> Specificity {
        match self.kind {
            PatternKind::All => Specificity(0),
            // Length fits: patterns are at most MAX_SCOPE_LEN bytes.
            PatternKind::Prefix => Specificity(1 + self.text.len() as u32),
            PatternKind::Exact => Specificity(u32::MAX),
        }
    }

    /// Whether every scope `other` matches is matched by `self`.
    fn covers(&self, other: &Self) -> bool {
        match (self.kind, other.kind) {
            (PatternKind::All, _) => true,
            (_, PatternKind::All) => false,
            (PatternKind::Exact, PatternKind::Exact) => self.text == other.text,
            (PatternKind::Exact, PatternKind::Prefix) => false,
            (PatternKind::Prefix, PatternKind::Exact) => other.text.starts_with(self.prefix()),
            (PatternKind::Prefix, PatternKind::Prefix) => other.prefix().starts_with(self.prefix()),
        }
    }

    /// For `prefix:*`, the text `prefix:`.
    fn prefix(&self) -> &str {
        self.text.strip_suffix('*').unwrap_or(&self.text)
    }
}

impl fmt::Debug for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// Checks that `name` is a plain scope name a rule can require.
pub fn check_scope_name(name: &str) -> Result<(), String> {
    check_scope_chars(name)?;
    if name.contains('*') {
        return Err(format!(
            "{name:?}: a required scope is a plain name, not a pattern"
        ));
    }
    Ok(())
}

fn check_scope_chars(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_SCOPE_LEN {
        return Err(format!(
            "{text:?}: a scope is 1 to {MAX_SCOPE_LEN} characters"
        ));
    }
    let valid = |byte: u8| matches!(byte, 0x21 | 0x23..=0x5B | 0x5D..=0x7E);
    if !text.bytes().all(valid) {
        return Err(format!(
            "{text:?}: a scope is visible ASCII without spaces, `\"` or `\\` (RFC 6750 scope-token)"
        ));
    }
    Ok(())
}

/// A key's effective scopes: each held pattern narrowed by the plan's
/// entitlement (when the plan has one), in the key's order, without
/// repeats. Key `*` on a plan granting `crm:*` is `crm:*`.
pub fn effective_scopes(
    held: &[ScopePattern],
    granted: Option<&[ScopePattern]>,
) -> Vec<ScopePattern> {
    let mut effective: Vec<ScopePattern> = Vec::new();
    for pattern in held {
        match granted {
            None => push_unique(&mut effective, pattern.clone()),
            Some(granted) => {
                for grant in granted {
                    if let Some(narrowed) = pattern.intersect(grant) {
                        push_unique(&mut effective, narrowed);
                    }
                }
            }
        }
    }
    effective
}

fn push_unique(list: &mut Vec<ScopePattern>, pattern: ScopePattern) {
    if !list.contains(&pattern) {
        list.push(pattern);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn p(text: &str) -> ScopePattern {
        ScopePattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_as_the_contract_says() {
        let cases = [
            ("leads:read", "leads:read", true),
            ("leads:read", "leads:write", false),
            ("leads:*", "leads:read", true),
            ("leads:*", "leads:", true),
            ("leads:*", "leadsx:read", false),
            ("leads:*", "leads", false),
            ("*", "anything:at:all", true),
            ("a:b:*", "a:b:c", true),
            ("a:b:*", "a:c", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(p(pattern).matches(name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn star_anywhere_but_alone_or_last_segment_is_refused() {
        for text in [
            "leads*",
            "le*ds:read",
            "*:read",
            "leads:*:x",
            "a:*b",
            "**",
            "leads:**",
        ] {
            assert!(ScopePattern::parse(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn scope_characters_follow_rfc_6750() {
        for text in ["", "a b", "a\"b", "a\\b", "é", &"a".repeat(129), "a\tb"] {
            assert!(ScopePattern::parse(text).is_err(), "accepted {text:?}");
        }
        assert!(ScopePattern::parse(&"a".repeat(128)).is_ok());
        assert!(ScopePattern::parse("read:landing-pages").is_ok());
    }

    #[test]
    fn a_required_scope_must_be_a_plain_name() {
        assert!(check_scope_name("leads:read").is_ok());
        assert!(check_scope_name("leads:*").is_err());
        assert!(check_scope_name("*").is_err());
    }

    #[test]
    fn intersection_keeps_the_narrower_pattern() {
        let cases = [
            ("*", "crm:*", Some("crm:*")),
            ("crm:*", "*", Some("crm:*")),
            ("leads:*", "leads:read", Some("leads:read")),
            ("leads:read", "leads:read", Some("leads:read")),
            ("leads:read", "leads:write", None),
            ("a:*", "a:b:*", Some("a:b:*")),
            ("a:*", "b:*", None),
        ];
        for (a, b, expected) in cases {
            let got = p(a).intersect(&p(b));
            assert_eq!(
                got.as_ref().map(ScopePattern::as_str),
                expected,
                "{a} ∩ {b}"
            );
        }
    }

    #[test]
    fn effective_scopes_are_narrowed_in_the_keys_order() {
        let held = [p("leads:*"), p("*"), p("admin")];
        let granted = [p("leads:read"), p("mcp:*")];
        let effective: Vec<_> = effective_scopes(&held, Some(&granted))
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(effective, ["leads:read", "mcp:*"]);
    }

    #[test]
    fn without_an_entitlement_held_scopes_are_effective() {
        let held = [p("a"), p("b:*"), p("a")];
        let effective: Vec<_> = effective_scopes(&held, None)
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(effective, ["a", "b:*"]);
    }

    #[test]
    fn exact_beats_longest_prefix_beats_star() {
        assert!(p("leads:read").specificity() > p("leads:*").specificity());
        assert!(p("leads:sub:*").specificity() > p("leads:*").specificity());
        assert!(p("leads:*").specificity() > p("*").specificity());
    }
}
