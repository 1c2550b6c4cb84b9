//! Route rules: which requests are public and which scope the others need.
//!
//! Rules are compiled once at configuration time (paths normalised,
//! trailing `/` dropped, folded to lower case when paths are
//! case-insensitive), so matching a request is a few byte comparisons.
//! First match wins; a request no rule matches needs a valid key and no
//! scope. Requests are matched as contract §7.1 amends v1: on the path
//! without its `;` parameters, with `HEAD` following `GET`, and, when
//! paths are case-insensitive, never on a path holding a byte above ASCII.

use crate::path::{self, PathError};

/// What a matching rule asks of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// No key needed.
    Public,
    /// A valid key, holding `scope` when there is one.
    Key {
        /// The scope the key must hold.
        scope: Option<String>,
    },
}

/// Where a rule applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// This path, or it with one trailing `/`. Stored without the trailing
    /// `/` (the root is stored empty).
    Exact(Vec<u8>),
    /// This path and everything below it at a segment boundary. Stored
    /// without the trailing `/` (the root, which covers all, is empty).
    Prefix(Vec<u8>),
}

impl PathMatch {
    fn matches(&self, path: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => match path.strip_prefix(exact.as_slice()) {
                Some(rest) => rest.is_empty() || rest == b"/",
                None => false,
            },
            Self::Prefix(prefix) => match path.strip_prefix(prefix.as_slice()) {
                Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
                None => false,
            },
        }
    }
}

/// One compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where it applies.
    pub path: PathMatch,
    /// The methods it applies to; `None` = all.
    pub methods: Option<Vec<String>>,
    /// What it asks.
    pub requirement: Requirement,
}

impl Rule {
    /// Whether the rule applies to `method`. Methods compare exactly, and
    /// a rule listing `GET` also applies to `HEAD` (contract §7.1, RFC 9110
    /// §9.3.2: the same resource without its body). Without that, a rule
    /// written for `GET` left `HEAD` open, and an upstream that answers
    /// `HEAD` through its `GET` handler runs that handler, side effects
    /// and all, for a key without the scope (issue 17, finding 3).
    fn matches_method(&self, method: &[u8]) -> bool {
        let Some(methods) = &self.methods else {
            return true;
        };
        methods
            .iter()
            .any(|listed| listed.as_bytes() == method || (method == b"HEAD" && listed == "GET"))
    }
}

/// The rules of a configuration, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    case_insensitive: bool,
}

/// The requirement of a request no rule matches.
pub const DEFAULT_REQUIREMENT: Requirement = Requirement::Key { scope: None };

impl RuleSet {
    /// Builds a rule set from compiled rules. With `case_insensitive`, rule
    /// paths must already be lower case (the configuration folds them).
    pub fn new(rules: Vec<Rule>, case_insensitive: bool) -> Self {
        Self {
            rules,
            case_insensitive,
        }
    }

    /// Whether paths compare case-insensitively.
    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    /// The requirement of the first rule matching `method` and the
    /// normalised `path`, compared without its path parameters (contract
    /// §7.1: a rule for `/api/v1/admin` covers `/api/v1/admin;x=1/keys`,
    /// which Java upstreams serve as `/api/v1/admin/keys`).
    ///
    /// With case-insensitive paths, a path holding a byte above ASCII (raw
    /// or percent-encoded, parameters included) is refused: the fold here
    /// is ASCII only, and upstreams that fold case in Java or Python turn
    /// some such characters into ASCII letters (`%E2%84%AA`, the Kelvin
    /// sign, into `k`), so no rule could be matched safely.
    pub fn route(&self, method: &[u8], path: &[u8]) -> Result<&Requirement, PathError> {
        if self.case_insensitive && holds_non_ascii(path) {
            return Err(PathError::NonAsciiFolded);
        }
        let mut path = path::without_parameters(path);
        if self.case_insensitive && path.iter().any(u8::is_ascii_uppercase) {
            path.to_mut().make_ascii_lowercase();
        }
        self.rules
            .iter()
            .find(|rule| rule.matches_method(method) && rule.path.matches(&path))
            .map_or(Ok(&DEFAULT_REQUIREMENT), |rule| Ok(&rule.requirement))
    }
}

/// Whether `path` holds a byte above ASCII, raw or as a `%XX` escape
/// (whose first hex digit is then 8 to F, in either case).
pub(crate) fn holds_non_ascii(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(at, &byte)| {
        !byte.is_ascii()
            || (byte == b'%'
                && matches!(
                    path.get(at + 1),
                    Some(b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f')
                ))
    })
}

/// Strips one trailing `/` (the root becomes empty), the stored form of a
/// rule path.
pub fn stored_form(normalised: &[u8]) -> Vec<u8> {
    normalised.strip_suffix(b"/").unwrap_or(normalised).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn scope(name: &str) -> Requirement {
        Requirement::Key {
            scope: Some(name.to_owned()),
        }
    }

    fn rule(path: PathMatch, methods: Option<&[&str]>, requirement: Requirement) -> Rule {
        Rule {
            path,
            methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
            requirement,
        }
    }

    fn contract_example() -> RuleSet {
        RuleSet::new(
            vec![
                rule(
                    PathMatch::Prefix(b"/healthz".to_vec()),
                    None,
                    Requirement::Public,
                ),
                rule(
                    PathMatch::Prefix(b"/api/v1/leads".to_vec()),
                    Some(&["GET", "HEAD"]),
                    scope("leads:read"),
                ),
                rule(
                    PathMatch::Prefix(b"/api/v1/leads".to_vec()),
                    Some(&["POST", "PUT", "PATCH"]),
                    scope("leads:write"),
                ),
                rule(
                    PathMatch::Exact(b"/api/v1/admin/keys".to_vec()),
                    None,
                    scope("admin"),
                ),
            ],
            false,
        )
    }

    #[test]
    fn the_contract_example_routes_as_written() {
        let rules = contract_example();
        let cases: [(&str, &str, Requirement); 11] = [
            ("GET", "/healthz", Requirement::Public),
            ("POST", "/healthz/deep", Requirement::Public),
            ("GET", "/healthzx", DEFAULT_REQUIREMENT),
            ("GET", "/api/v1/leads", scope("leads:read")),
            ("HEAD", "/api/v1/leads/7", scope("leads:read")),
            ("POST", "/api/v1/leads/7", scope("leads:write")),
            ("DELETE", "/api/v1/leads/7", DEFAULT_REQUIREMENT),
            ("GET", "/api/v1/leadsx", DEFAULT_REQUIREMENT),
            ("GET", "/api/v1/admin/keys", scope("admin")),
            ("GET", "/api/v1/admin/keys/", scope("admin")),
            ("GET", "/api/v1/admin/keys/7", DEFAULT_REQUIREMENT),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                rules.route(method.as_bytes(), path.as_bytes()),
                Ok(&expected),
                "{method} {path}"
            );
        }
    }

    /// Issue 17, finding 3: a rule for `GET` left `HEAD` of the same
    /// resource open. Contract §7.1: a rule whose `methods` list `GET`
    /// also matches `HEAD`.
    #[test]
    fn a_get_rule_also_matches_head() {
        let rules = RuleSet::new(
            vec![
                rule(
                    PathMatch::Prefix(b"/v2/reports".to_vec()),
                    Some(&["GET"]),
                    scope("reports:read"),
                ),
                rule(
                    PathMatch::Prefix(b"/v2/head-only".to_vec()),
                    Some(&["HEAD"]),
                    scope("h"),
                ),
            ],
            false,
        );
        let cases: [(&str, &str, Requirement); 6] = [
            ("GET", "/v2/reports", scope("reports:read")),
            ("HEAD", "/v2/reports", scope("reports:read")),
            ("HEAD", "/v2/reports/7", scope("reports:read")),
            ("POST", "/v2/reports", DEFAULT_REQUIREMENT),
            ("head", "/v2/reports", DEFAULT_REQUIREMENT),
            ("GET", "/v2/head-only", DEFAULT_REQUIREMENT),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                rules.route(method.as_bytes(), path.as_bytes()),
                Ok(&expected),
                "{method} {path}"
            );
        }
    }

    /// Issue 17, finding 2: a key without `reports:read` got 200 for
    /// `/v2/reports;x=1` under a `/v2/reports` rule, and Java-style
    /// upstreams served `/v2/reports`. Contract §7.1: rules compare the
    /// path with every segment's parameters removed.
    #[test]
    fn path_parameters_do_not_dodge_a_rule() {
        let rules = RuleSet::new(
            vec![
                rule(
                    PathMatch::Prefix(b"/v2/reports".to_vec()),
                    None,
                    scope("reports:read"),
                ),
                rule(
                    PathMatch::Prefix(b"/api/v1/admin".to_vec()),
                    None,
                    scope("admin"),
                ),
                rule(
                    PathMatch::Exact(b"/api/v1/exact".to_vec()),
                    None,
                    scope("exact"),
                ),
                rule(PathMatch::Exact(Vec::new()), None, scope("root")),
            ],
            false,
        );
        let cases: [(&str, Requirement); 13] = [
            ("/v2/reports;x=1", scope("reports:read")),
            ("/v2/reports;x=1/7", scope("reports:read")),
            ("/v2;a=b/reports", scope("reports:read")),
            ("/api/v1/admin;x=1", scope("admin")),
            ("/api/v1/admin;x=1/keys", scope("admin")),
            ("/api/v1/admin;/keys", scope("admin")),
            ("/api/v1/admin/;x/keys", scope("admin")),
            ("/api/v1/exact;v=2", scope("exact")),
            ("/api/v1/exact;v=2/", scope("exact")),
            ("/api/v1/exact/;v=2", scope("exact")),
            ("/;x", scope("root")),
            // An encoded `;` is data, part of the segment's name.
            ("/api/v1/admin%3Bx=1", DEFAULT_REQUIREMENT),
            ("/api/v1/adminx;y", DEFAULT_REQUIREMENT),
        ];
        for (path, expected) in cases {
            assert_eq!(
                rules.route(b"GET", path.as_bytes()),
                Ok(&expected),
                "GET {path}"
            );
        }
    }

    #[test]
    fn methods_compare_exactly() {
        let rules = contract_example();
        assert_eq!(
            rules.route(b"get", b"/api/v1/leads"),
            Ok(&DEFAULT_REQUIREMENT)
        );
    }

    #[test]
    fn paths_compare_case_sensitively_unless_configured() {
        let rules = contract_example();
        assert_eq!(
            rules.route(b"GET", b"/API/v1/admin/keys"),
            Ok(&DEFAULT_REQUIREMENT)
        );
        let folded = RuleSet::new(
            vec![rule(
                PathMatch::Prefix(b"/v2/admin".to_vec()),
                None,
                scope("admin"),
            )],
            true,
        );
        assert_eq!(folded.route(b"GET", b"/V2/ADMIN/x"), Ok(&scope("admin")));
    }

    /// Issue 17, finding 8: `case_insensitive_paths` folds ASCII only,
    /// while upstreams that fold case in Java or Python also fold the
    /// Kelvin sign (U+212A, `%E2%84%AA`) to `k` and the long s (U+017F,
    /// `%C5%BF`) to `s`: `/v2/%E2%84%AAeys` skipped a `/v2/keys` rule and
    /// reached `/v2/keys` upstream. With the option on, a path holding a
    /// byte above ASCII is refused.
    #[test]
    fn folded_paths_with_bytes_above_ascii_are_refused() {
        let folded = RuleSet::new(
            vec![rule(
                PathMatch::Prefix(b"/v2/keys".to_vec()),
                None,
                scope("admin"),
            )],
            true,
        );
        let refused: [&[u8]; 7] = [
            b"/v2/%E2%84%AAeys",
            b"/v2/%e2%84%aaeys",
            b"/v2/key%C5%BF",
            b"/v2/keys/%C3%A9",
            b"/v2/keys;p=%80",
            b"/%FF",
            b"/v2/\xe2\x84\xaaeys",
        ];
        for path in refused {
            assert_eq!(
                folded.route(b"GET", path),
                Err(PathError::NonAsciiFolded),
                "GET {} with case-insensitive paths",
                String::from_utf8_lossy(path)
            );
        }
        // ASCII escapes and a literal `%` sign's escape are no reason.
        assert_eq!(
            folded.route(b"GET", b"/V2/KEYS/%20%7F%25"),
            Ok(&scope("admin"))
        );
        assert_eq!(folded.route(b"GET", b"/x%3B"), Ok(&DEFAULT_REQUIREMENT));
        // Paths that compare case-sensitively keep every byte.
        let exact = RuleSet::new(Vec::new(), false);
        for path in refused {
            assert_eq!(exact.route(b"GET", path), Ok(&DEFAULT_REQUIREMENT));
        }
    }

    #[test]
    fn root_prefix_and_pathless_rules_match_everything() {
        let root = RuleSet::new(
            vec![rule(PathMatch::Prefix(Vec::new()), None, scope("s"))],
            false,
        );
        assert_eq!(root.route(b"GET", b"/"), Ok(&scope("s")));
        assert_eq!(root.route(b"GET", b"/a/b"), Ok(&scope("s")));
        let any = RuleSet::new(
            vec![rule(
                PathMatch::Any,
                Some(&["OPTIONS"]),
                Requirement::Public,
            )],
            false,
        );
        assert_eq!(any.route(b"OPTIONS", b"/x"), Ok(&Requirement::Public));
        assert_eq!(any.route(b"GET", b"/x"), Ok(&DEFAULT_REQUIREMENT));
    }

    #[test]
    fn an_exact_root_rule_matches_only_the_root() {
        let rules = RuleSet::new(
            vec![rule(
                PathMatch::Exact(Vec::new()),
                None,
                Requirement::Public,
            )],
            false,
        );
        assert_eq!(rules.route(b"GET", b"/"), Ok(&Requirement::Public));
        assert_eq!(rules.route(b"GET", b"/a"), Ok(&DEFAULT_REQUIREMENT));
    }

    #[test]
    fn stored_form_drops_one_trailing_slash() {
        assert_eq!(stored_form(b"/"), b"");
        assert_eq!(stored_form(b"/a/"), b"/a");
        assert_eq!(stored_form(b"/a"), b"/a");
    }
}
