//! Route rules: which requests are public and which scope the others need.
//!
//! Rules are compiled once at configuration time (paths normalised,
//! trailing `/` dropped, folded to lower case when paths are
//! case-insensitive), so matching a request is a few byte comparisons.
//! First match wins; a request no rule matches needs a valid key and no
//! scope. Requests are matched as contract §7.1 amends v1: on the path
//! without its `;` parameters, with `HEAD` following `GET`, and, when
//! paths are case-insensitive, never on a path holding a byte above ASCII.
//!
//! A rule path may hold one `{tenant}` segment (contract v1.1 §7.3): it
//! matches any one non-empty segment, and the match hands that segment to
//! the decision, which compares it with the key's tenant.

use core::ops::Range;

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
    /// A path with a `{tenant}` segment: `before` (ending in `/`), any one
    /// non-empty segment, then `after` as [`Self::Exact`] or
    /// [`Self::Prefix`] would match it (stored the same way; empty when
    /// `{tenant}` ends the path).
    Tenant {
        /// The path up to the segment, with its `/`.
        before: Vec<u8>,
        /// The rest, matched exactly or as a prefix.
        after: Vec<u8>,
        /// Whether `after` is a prefix (the rule's `path_prefix`).
        prefix: bool,
    },
}

impl PathMatch {
    /// `None` when `path` does not match; otherwise where the `{tenant}`
    /// segment lies in `path`, if the rule has one.
    fn matches(&self, path: &[u8]) -> Option<Option<Range<usize>>> {
        let matched = match self {
            Self::Any => true,
            Self::Exact(exact) => exact_rest(path.strip_prefix(exact.as_slice())),
            Self::Prefix(prefix) => prefix_rest(path.strip_prefix(prefix.as_slice())),
            Self::Tenant {
                before,
                after,
                prefix,
            } => {
                let rest = path.strip_prefix(before.as_slice())?;
                let length = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
                let remainder = rest.get(length..)?.strip_prefix(after.as_slice());
                let matched = if *prefix {
                    prefix_rest(remainder)
                } else {
                    exact_rest(remainder)
                };
                return (length > 0 && matched).then(|| Some(before.len()..before.len() + length));
            }
        };
        matched.then_some(None)
    }
}

/// Whether what follows an exact rule path is nothing or one `/`.
fn exact_rest(rest: Option<&[u8]>) -> bool {
    rest.is_some_and(|rest| rest.is_empty() || rest == b"/")
}

/// Whether what follows a prefix rule path starts at a segment boundary.
fn prefix_rest(rest: Option<&[u8]>) -> bool {
    rest.is_some_and(|rest| rest.is_empty() || rest.first() == Some(&b'/'))
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

/// What routing found for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<'r> {
    /// The first matching rule's requirement.
    pub requirement: &'r Requirement,
    /// That rule's `{tenant}` segment as the request has it (without its
    /// parameters; lower-cased when paths are case-insensitive).
    pub tenant: Option<Vec<u8>>,
}

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
        self.resolve(method, path).map(|route| route.requirement)
    }

    /// [`Self::route`], with the matching rule's `{tenant}` segment.
    pub fn resolve(&self, method: &[u8], path: &[u8]) -> Result<Route<'_>, PathError> {
        if self.case_insensitive && holds_non_ascii(path) {
            return Err(PathError::NonAsciiFolded);
        }
        let mut path = path::without_parameters(path);
        if self.case_insensitive && path.iter().any(u8::is_ascii_uppercase) {
            path.to_mut().make_ascii_lowercase();
        }
        let found = self
            .rules
            .iter()
            .filter(|rule| rule.matches_method(method))
            .find_map(|rule| {
                rule.path.matches(&path).map(|tenant| Route {
                    requirement: &rule.requirement,
                    tenant: tenant.and_then(|range| path.get(range)).map(<[u8]>::to_vec),
                })
            });
        Ok(found.unwrap_or(Route {
            requirement: &DEFAULT_REQUIREMENT,
            tenant: None,
        }))
    }
}

/// Whether the `{tenant}` segment of a request path names `tenant`: the
/// segment percent-decoded (§5 left every escape but the unreserved ones),
/// compared byte for byte, or ignoring ASCII case when paths are
/// case-insensitive.
pub fn segment_names_tenant(segment: &[u8], tenant: &str, case_insensitive: bool) -> bool {
    let mut decoded = Vec::with_capacity(segment.len());
    let mut bytes = segment.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let digits = bytes.as_slice().get(..2).and_then(|hex| {
                let text = core::str::from_utf8(hex).ok()?;
                u8::from_str_radix(text, 16).ok()
            });
            match digits {
                Some(value) => {
                    decoded.push(value);
                    bytes.nth(1);
                }
                // Normalisation refused malformed escapes; never equal.
                None => return false,
            }
        } else {
            decoded.push(byte);
        }
    }
    if case_insensitive {
        decoded.eq_ignore_ascii_case(tenant.as_bytes())
    } else {
        decoded == tenant.as_bytes()
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

    /// Routes each (method, path) and names the case that went wrong.
    fn assert_routes(rules: &RuleSet, cases: &[(&str, &str, Requirement)]) {
        for (method, path, expected) in cases {
            assert_eq!(
                rules.route(method.as_bytes(), path.as_bytes()),
                Ok(expected),
                "{method} {path}"
            );
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
        assert_routes(&rules, &cases);
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
        assert_routes(&rules, &cases);
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

    fn tenant_rule(before: &str, after: &str, prefix: bool) -> RuleSet {
        RuleSet::new(
            vec![rule(
                PathMatch::Tenant {
                    before: before.as_bytes().to_vec(),
                    after: after.as_bytes().to_vec(),
                    prefix,
                },
                None,
                scope("leads:read"),
            )],
            false,
        )
    }

    fn tenant_of(rules: &RuleSet, path: &str) -> Option<String> {
        let route = rules.resolve(b"GET", path.as_bytes()).unwrap();
        route
            .tenant
            .map(|segment| String::from_utf8(segment).unwrap())
    }

    #[test]
    fn a_tenant_segment_matches_any_one_non_empty_segment_and_hands_it_over() {
        let exact = tenant_rule("/api/v1/tenants/", "/leads", false);
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/acme/leads"),
            Some("acme".to_owned())
        );
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/acme/leads/"),
            Some("acme".to_owned())
        );
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/a%20b/leads"),
            Some("a%20b".to_owned())
        );
        for unmatched in [
            "/api/v1/tenants/acme/leads/7",
            "/api/v1/tenants//leads",
            "/api/v1/tenants/leads",
            "/api/v1/tenants/acme/x/leads",
            "/api/v1/tenants/acme",
        ] {
            let route = exact.resolve(b"GET", unmatched.as_bytes()).unwrap();
            assert_eq!(
                (route.requirement, route.tenant),
                (&DEFAULT_REQUIREMENT, None),
                "{unmatched}"
            );
        }
        let prefix = tenant_rule("/api/v1/tenants/", "/leads", true);
        assert_eq!(
            tenant_of(&prefix, "/api/v1/tenants/acme/leads/7"),
            Some("acme".to_owned())
        );
        assert_eq!(
            prefix.route(b"GET", b"/api/v1/tenants/acme/leadsx"),
            Ok(&DEFAULT_REQUIREMENT)
        );
        let last = tenant_rule("/t/", "", true);
        assert_eq!(tenant_of(&last, "/t/acme"), Some("acme".to_owned()));
        assert_eq!(
            tenant_of(&last, "/t/acme/anything"),
            Some("acme".to_owned())
        );
        assert_eq!(last.route(b"GET", b"/t/"), Ok(&DEFAULT_REQUIREMENT));
    }

    #[test]
    fn a_tenant_segment_names_the_tenant_once_percent_decoded() {
        assert!(segment_names_tenant(b"acme", "acme", false));
        assert!(segment_names_tenant(b"acme%20corp", "acme corp", false));
        assert!(segment_names_tenant(b"caf%C3%A9", "caf\u{e9}", false));
        assert!(!segment_names_tenant(b"Acme", "acme", false));
        assert!(segment_names_tenant(b"ACME", "acme", true));
        assert!(!segment_names_tenant(b"acme2", "acme", false));
        assert!(!segment_names_tenant(b"acm", "acme", false));
        assert!(!segment_names_tenant(b"%zz", "%zz", false));
    }

    #[test]
    fn a_tenant_segment_is_named_without_its_parameters() {
        let rules = tenant_rule("/t/", "/leads", true);
        assert_eq!(
            tenant_of(&rules, "/t/acme;v=1/leads/7"),
            Some("acme".to_owned())
        );
    }

    #[test]
    fn stored_form_drops_one_trailing_slash() {
        assert_eq!(stored_form(b"/"), b"");
        assert_eq!(stored_form(b"/a/"), b"/a");
        assert_eq!(stored_form(b"/a"), b"/a");
    }
}
