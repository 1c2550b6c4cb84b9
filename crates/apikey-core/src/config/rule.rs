//! Rules as written (contract §1.6) compiled for the request path: a rule
//! path is stored canonical, folded when paths compare case-insensitively,
//! and split at its `{tenant}` segment (§7.3); methods are checked as
//! tokens.

use super::document::RawRule;
use super::{refuse, ConfigError};
use crate::path;
use crate::rules::{PathMatch, Requirement, Rule};
use crate::scope::check_scope_name;

impl RawRule<'_> {
    /// Compiles the rule at `field` (`rules[2]`).
    pub(super) fn validate(self, field: &str, case_insensitive: bool) -> Result<Rule, ConfigError> {
        let public = self.public.unwrap_or(false);
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
        if public && matches!(path, PathMatch::Tenant { .. }) {
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
        let requirement = match (public, self.scope) {
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
