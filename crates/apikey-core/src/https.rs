//! HTTPS only (contract v1.1 §7.2): `require_https` refuses every request
//! that did not reach Envoy over TLS, before its path or credential is read.
//!
//! TLS is Envoy's own view of the downstream connection, which the edge
//! asks the host for only when a configuration requires HTTPS, so other
//! configurations pay nothing for it. Behind a load balancer that
//! terminates TLS, `trusted_https_header` names the header that carries the
//! original scheme (`x-forwarded-proto`), and its value `https`, as Envoy
//! forwards it, counts too. Without that setting no header is trusted: a
//! client over plain HTTP could send `x-forwarded-proto: https` itself.

use crate::config::ConfigError;
use crate::header_map::HeaderPair;

/// The longest header name `trusted_https_header` may name.
const MAX_HEADER_NAME_LEN: usize = 128;

/// Headers that carry something else than the original scheme: naming one
/// would let a credential or an identity the filter sets decide TLS.
const RESERVED_HEADERS: [&str; 7] = [
    "authorization",
    "x-api-key",
    "x-api-key-id",
    "x-api-tenant",
    "x-api-scopes",
    "x-api-plan",
    "x-api-env",
];

/// A configuration's HTTPS requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsPolicy {
    /// The lower-cased header whose value `https` counts as TLS.
    trusted_header: Option<String>,
}

impl HttpsPolicy {
    /// Validates `require_https` and `trusted_https_header`: `None` when
    /// HTTPS is not required. A trusted header without the requirement is
    /// refused, since it would silently do nothing.
    pub fn from_config(
        require_https: Option<bool>,
        trusted_header: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let field = "trusted_https_header";
        let trusted_header = match trusted_header {
            None => None,
            Some(name) => {
                let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(tchar) {
                    return Err(ConfigError {
                        field: field.to_owned(),
                        reason: format!(
                            "{name:?} is not a header name (1 to 128 token characters)"
                        ),
                    });
                }
                let name = name.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(ConfigError {
                        field: field.to_owned(),
                        reason: format!(
                            "{name:?} carries credentials or identities, not the scheme"
                        ),
                    });
                }
                Some(name)
            }
        };
        match (require_https.unwrap_or(false), trusted_header) {
            (true, trusted_header) => Ok(Some(Self { trusted_header })),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ConfigError {
                field: field.to_owned(),
                reason: "has no effect without \"require_https\": true".to_owned(),
            }),
        }
    }

    /// Whether a request reached Envoy over TLS: `tls` is the host's view
    /// of the downstream connection; the trusted header's value `https`
    /// (exactly one value, any case) counts too.
    pub fn admits(&self, tls: bool, headers: &[HeaderPair<'_>]) -> bool {
        if tls {
            return true;
        }
        let Some(trusted) = &self.trusted_header else {
            return false;
        };
        let mut values = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(trusted.as_bytes()))
            .map(|(_, value)| value.trim_ascii());
        matches!(
            (values.next(), values.next()),
            (Some(value), None) if value.eq_ignore_ascii_case(b"https")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(trusted: Option<&str>) -> HttpsPolicy {
        HttpsPolicy::from_config(Some(true), trusted.map(str::to_owned))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("require_https with {trusted:?} was refused"))
    }

    #[test]
    fn a_tls_connection_is_admitted_whatever_its_headers() {
        assert!(policy(None).admits(true, &[]));
        assert!(policy(None).admits(true, &[(b"x-forwarded-proto", b"http")]));
    }

    #[test]
    fn plain_http_is_refused_even_with_a_forwarded_proto_when_no_header_is_trusted() {
        assert!(!policy(None).admits(false, &[]));
        assert!(!policy(None).admits(false, &[(b"x-forwarded-proto", b"https")]));
    }

    #[test]
    fn the_trusted_header_counts_only_when_it_says_https_once() {
        let policy = policy(Some("X-Forwarded-Proto"));
        assert!(policy.admits(false, &[(b"x-forwarded-proto", b"https")]));
        assert!(policy.admits(false, &[(b"X-Forwarded-Proto", b" HTTPS ")]));
        let refused: [&[HeaderPair<'_>]; 5] = [
            &[],
            &[(b"x-forwarded-proto", b"http")],
            &[(b"x-forwarded-proto", b"https, http")],
            &[
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-proto", b"http"),
            ],
            &[(b"x-forwarded-scheme", b"https")],
        ];
        for headers in refused {
            assert!(!policy.admits(false, headers), "{headers:?} counted as TLS");
        }
    }

    #[test]
    fn require_https_is_off_by_default_and_a_trusted_header_alone_is_refused() {
        assert_eq!(HttpsPolicy::from_config(None, None), Ok(None));
        assert_eq!(HttpsPolicy::from_config(Some(false), None), Ok(None));
        let error = HttpsPolicy::from_config(None, Some("x-forwarded-proto".into()));
        assert_eq!(
            error.map_err(|e| e.to_string()),
            Err("trusted_https_header: has no effect without \"require_https\": true".to_owned())
        );
    }

    #[test]
    fn a_trusted_header_must_be_a_header_name_that_carries_no_credential() {
        for name in [
            "",
            "x forwarded",
            "x-forwarded-proto:",
            ":scheme",
            "Authorization",
            "x-api-env",
        ] {
            assert!(
                HttpsPolicy::from_config(Some(true), Some(name.into())).is_err(),
                "{name:?} was accepted"
            );
        }
    }
}
