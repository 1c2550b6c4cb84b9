//! Route rules: which requests are public and which scope the others need.
//!
//! Rules are compiled once at configuration time (paths normalised,
//! trailing `/` dropped, folded to lower case when paths are
//! case-insensitive), so matching a request is a few byte comparisons.
//! First match wins; a request no rule matches needs a valid key and no
//! scope.
//!
//! A rule path may hold one `{tenant}` segment (contract v1.1 §7.3): it
//! matches any one non-empty segment, and the match says where that
//! segment lies so the decision can compare it with the key's tenant.

use core::ops::Range;

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
    /// Where that rule's `{tenant}` segment lies in the routed path.
    pub tenant: Option<Range<usize>>,
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
    /// normalised `path`.
    pub fn route(&self, method: &[u8], path: &[u8]) -> &Requirement {
        self.resolve(method, path).requirement
    }

    /// The first rule matching `method` and the normalised `path`: its
    /// requirement, and where its `{tenant}` segment lies in `path` (case
    /// folding keeps every byte where it was).
    pub fn resolve(&self, method: &[u8], path: &[u8]) -> Route<'_> {
        let folded;
        let path = if self.case_insensitive && path.iter().any(u8::is_ascii_uppercase) {
            folded = path.to_ascii_lowercase();
            folded.as_slice()
        } else {
            path
        };
        self.rules
            .iter()
            .filter(|rule| {
                rule.methods
                    .as_ref()
                    .is_none_or(|methods| methods.iter().any(|m| m.as_bytes() == method))
            })
            .find_map(|rule| {
                rule.path.matches(path).map(|tenant| Route {
                    requirement: &rule.requirement,
                    tenant,
                })
            })
            .unwrap_or(Route {
                requirement: &DEFAULT_REQUIREMENT,
                tenant: None,
            })
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
                &expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn methods_compare_exactly() {
        let rules = contract_example();
        assert_eq!(rules.route(b"get", b"/api/v1/leads"), &DEFAULT_REQUIREMENT);
    }

    #[test]
    fn paths_compare_case_sensitively_unless_configured() {
        let rules = contract_example();
        assert_eq!(
            rules.route(b"GET", b"/API/v1/admin/keys"),
            &DEFAULT_REQUIREMENT
        );
        let folded = RuleSet::new(
            vec![rule(
                PathMatch::Prefix(b"/v2/admin".to_vec()),
                None,
                scope("admin"),
            )],
            true,
        );
        assert_eq!(folded.route(b"GET", b"/V2/ADMIN/x"), &scope("admin"));
    }

    #[test]
    fn root_prefix_and_pathless_rules_match_everything() {
        let root = RuleSet::new(
            vec![rule(PathMatch::Prefix(Vec::new()), None, scope("s"))],
            false,
        );
        assert_eq!(root.route(b"GET", b"/"), &scope("s"));
        assert_eq!(root.route(b"GET", b"/a/b"), &scope("s"));
        let any = RuleSet::new(
            vec![rule(
                PathMatch::Any,
                Some(&["OPTIONS"]),
                Requirement::Public,
            )],
            false,
        );
        assert_eq!(any.route(b"OPTIONS", b"/x"), &Requirement::Public);
        assert_eq!(any.route(b"GET", b"/x"), &DEFAULT_REQUIREMENT);
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
        assert_eq!(rules.route(b"GET", b"/"), &Requirement::Public);
        assert_eq!(rules.route(b"GET", b"/a"), &DEFAULT_REQUIREMENT);
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

    fn tenant_of<'p>(rules: &RuleSet, path: &'p str) -> Option<&'p str> {
        let route = rules.resolve(b"GET", path.as_bytes());
        route.tenant.map(|range| &path[range])
    }

    #[test]
    fn a_tenant_segment_matches_any_one_non_empty_segment_and_says_where() {
        let exact = tenant_rule("/api/v1/tenants/", "/leads", false);
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/acme/leads"),
            Some("acme")
        );
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/acme/leads/"),
            Some("acme")
        );
        assert_eq!(
            tenant_of(&exact, "/api/v1/tenants/a%20b/leads"),
            Some("a%20b")
        );
        for unmatched in [
            "/api/v1/tenants/acme/leads/7",
            "/api/v1/tenants//leads",
            "/api/v1/tenants/leads",
            "/api/v1/tenants/acme/x/leads",
            "/api/v1/tenants/acme",
        ] {
            let route = exact.resolve(b"GET", unmatched.as_bytes());
            assert_eq!(
                (route.requirement, route.tenant),
                (&DEFAULT_REQUIREMENT, None),
                "{unmatched}"
            );
        }
        let prefix = tenant_rule("/api/v1/tenants/", "/leads", true);
        assert_eq!(
            tenant_of(&prefix, "/api/v1/tenants/acme/leads/7"),
            Some("acme")
        );
        assert_eq!(
            prefix.route(b"GET", b"/api/v1/tenants/acme/leadsx"),
            &DEFAULT_REQUIREMENT
        );
        let last = tenant_rule("/t/", "", true);
        assert_eq!(tenant_of(&last, "/t/acme"), Some("acme"));
        assert_eq!(tenant_of(&last, "/t/acme/anything"), Some("acme"));
        assert_eq!(last.route(b"GET", b"/t/"), &DEFAULT_REQUIREMENT);
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
    fn stored_form_drops_one_trailing_slash() {
        assert_eq!(stored_form(b"/"), b"");
        assert_eq!(stored_form(b"/a/"), b"/a");
        assert_eq!(stored_form(b"/a"), b"/a");
    }
}
