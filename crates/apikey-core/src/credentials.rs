//! Finding the API key in a request's headers (contract §2).
//!
//! Every value of every credential header is read, and each value is a
//! comma-separated list (Envoy joins repeated `Authorization` headers into
//! `Bearer A,Bearer B`), so a client cannot have one key checked while a
//! different one travels upstream. Credentials are compared as sent: all
//! equal counts as one, any difference is a conflict, judged before the
//! format so that a bad second key cannot hide behind a good first one.
//! Everything is bytes; no input can panic.

use crate::header_map::HeaderPair;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// The header schemes a key may arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `Authorization: ApiKey <key>`.
    ApiKey,
    /// `X-API-Key: <key>`.
    XApiKey,
}

impl Scheme {
    /// Every scheme, in the order challenges are listed.
    pub const ALL: [Self; 3] = [Self::Bearer, Self::ApiKey, Self::XApiKey];

    /// The configuration name (`bearer`, `apikey`, `x-api-key`).
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::ApiKey => "apikey",
            Self::XApiKey => "x-api-key",
        }
    }

    /// Parses a configuration name, case-insensitively.
    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.config_name().eq_ignore_ascii_case(name))
    }

    const fn bit(self) -> u8 {
        match self {
            Self::Bearer => 1,
            Self::ApiKey => 2,
            Self::XApiKey => 4,
        }
    }
}

/// A set of enabled schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schemes(u8);

impl Schemes {
    /// All three schemes, the default.
    pub const ALL: Self = Self(7);

    /// No scheme (only a builder's starting point; a configuration refuses it).
    pub const NONE: Self = Self(0);

    /// This set plus `scheme`.
    pub const fn with(self, scheme: Scheme) -> Self {
        Self(self.0 | scheme.bit())
    }

    /// Whether `scheme` is enabled.
    pub const fn contains(self, scheme: Scheme) -> bool {
        self.0 & scheme.bit() != 0
    }

    /// Whether no scheme is enabled.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether an `Authorization` scheme (bearer or apikey) is enabled.
    pub const fn reads_authorization(self) -> bool {
        self.0 & (Scheme::Bearer.bit() | Scheme::ApiKey.bit()) != 0
    }
}

/// Why no usable key was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialError {
    /// No credential in an enabled scheme.
    Missing,
    /// Empty, too long, bad characters, or not one of `key_prefixes`.
    Malformed,
    /// Two different credentials in one request.
    Conflicting,
}

/// The key a request presented, borrowed from its headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The key bytes, already checked for format.
    pub key: &'a [u8],
    /// Whether any of the request's credentials came with `Bearer` (a 403
    /// then carries a Bearer `insufficient_scope` challenge).
    pub via_bearer: bool,
}

/// What extraction found, including what must change before the request
/// goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Extraction<'a> {
    /// The key, or why there is none.
    pub result: Result<Presented<'a>, CredentialError>,
    /// Whether an `Authorization` header carried a credential of ours, so
    /// the header must be rewritten (or removed) before the upstream sees it.
    pub authorization_had_credential: bool,
    /// The `Authorization` elements of other schemes, to keep upstream.
    pub other_authorization: Vec<&'a [u8]>,
    /// Whether an enabled `X-API-Key` header was present (it is removed).
    pub x_api_key_present: bool,
}

/// Format rules for keys beyond the contract's fixed ones.
pub struct KeyFormat<'c> {
    /// Enabled schemes.
    pub schemes: Schemes,
    /// When set, a key must start with one of these (case-sensitively).
    pub prefixes: Option<&'c [String]>,
}

/// Extracts the credential from the request headers.
pub fn extract<'a>(headers: &[HeaderPair<'a>], format: &KeyFormat<'_>) -> Extraction<'a> {
    let mut found = Found::default();
    let mut authorization_had_credential = false;
    let mut other_authorization = Vec::new();
    let mut x_api_key_present = false;
    for &(name, value) in headers {
        if format.schemes.reads_authorization() && name.eq_ignore_ascii_case(b"authorization") {
            for element in authorization_elements(value) {
                match enabled_credential(element, format.schemes) {
                    Some((scheme, key)) => {
                        authorization_had_credential = true;
                        found.add(key, scheme == Scheme::Bearer);
                    }
                    None => other_authorization.push(element),
                }
            }
        } else if format.schemes.contains(Scheme::XApiKey)
            && name.eq_ignore_ascii_case(b"x-api-key")
        {
            x_api_key_present = true;
            let mut any = false;
            for element in list_elements(value) {
                any = true;
                found.add(element, false);
            }
            if !any {
                found.add(b"", false);
            }
        }
    }
    Extraction {
        result: found.finish(format.prefixes),
        authorization_had_credential,
        other_authorization,
        x_api_key_present,
    }
}

/// Credentials seen so far: the first, and whether any differed.
#[derive(Default)]
struct Found<'a> {
    first: Option<&'a [u8]>,
    conflicting: bool,
    via_bearer: bool,
}

impl<'a> Found<'a> {
    fn add(&mut self, key: &'a [u8], via_bearer: bool) {
        self.via_bearer |= via_bearer;
        match self.first {
            None => self.first = Some(key),
            Some(first) if first != key => self.conflicting = true,
            Some(_) => {}
        }
    }

    fn finish(self, prefixes: Option<&[String]>) -> Result<Presented<'a>, CredentialError> {
        let key = self.first.ok_or(CredentialError::Missing)?;
        if self.conflicting {
            return Err(CredentialError::Conflicting);
        }
        if !is_well_formed(key, prefixes) {
            return Err(CredentialError::Malformed);
        }
        Ok(Presented {
            key,
            via_bearer: self.via_bearer,
        })
    }
}

/// 1–256 visible ASCII characters without a comma, starting with one of the
/// configured prefixes when there are any.
fn is_well_formed(key: &[u8], prefixes: Option<&[String]>) -> bool {
    let visible = |byte: &u8| matches!(byte, 0x21..=0x7E) && *byte != b',';
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.iter().all(visible)
        && prefixes.is_none_or(|prefixes| prefixes.iter().any(|p| key.starts_with(p.as_bytes())))
}

/// The scheme and key of an `Authorization` element, when its scheme is
/// enabled. `Bearer` alone is an enabled scheme with an empty key.
fn enabled_credential(element: &[u8], schemes: Schemes) -> Option<(Scheme, &[u8])> {
    let split = element
        .iter()
        .position(|&b| is_ows(b))
        .unwrap_or(element.len());
    let (scheme_token, rest) = element.split_at(split);
    let scheme = if scheme_token.eq_ignore_ascii_case(b"bearer") {
        Scheme::Bearer
    } else if scheme_token.eq_ignore_ascii_case(b"apikey") {
        Scheme::ApiKey
    } else {
        return None;
    };
    schemes.contains(scheme).then(|| (scheme, trim_ows(rest)))
}

/// Splits an `Authorization` value into elements. A list member with no
/// white space of its own continues the element before it, so the
/// parameters of `Digest a=1, b=2` stay together and `Bearer a,b` is one
/// element with the key `a,b`.
fn authorization_elements(value: &[u8]) -> Vec<&[u8]> {
    let mut elements: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for piece in value.split(|&b| b == b',') {
        let piece_start = start;
        start += piece.len() + 1;
        let trimmed = trim_ows(piece);
        if trimmed.is_empty() {
            continue;
        }
        let offset = piece_start + (trimmed.as_ptr() as usize - piece.as_ptr() as usize);
        let end = offset + trimmed.len();
        match elements.last_mut() {
            Some(last) if !trimmed.iter().any(|&b| is_ows(b)) => last.1 = end,
            _ => elements.push((offset, end)),
        }
    }
    elements
        .into_iter()
        .filter_map(|(from, to)| value.get(from..to))
        .collect()
}

/// Non-empty, trimmed members of a comma-separated list.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;
    use CredentialError::*;

    const ALL: KeyFormat<'static> = KeyFormat {
        schemes: Schemes::ALL,
        prefixes: None,
    };

    fn key_of(
        headers: &[(&str, &[u8])],
        format: &KeyFormat<'_>,
    ) -> Result<Vec<u8>, CredentialError> {
        let pairs: Vec<HeaderPair<'_>> = headers.iter().map(|(n, v)| (n.as_bytes(), *v)).collect();
        extract(&pairs, format).result.map(|p| p.key.to_vec())
    }

    /// A named case: headers and the expected key or error.
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a [u8])],
        Result<&'a [u8], CredentialError>,
    );

    fn check(cases: &[Case<'_>], format: &KeyFormat<'_>) {
        for (name, headers, expected) in cases {
            let got = key_of(headers, format);
            assert_eq!(got.as_deref().map_err(|e| *e), *expected, "case {name:?}");
        }
    }

    #[test]
    fn each_scheme_yields_its_key() {
        check(
            &[
                (
                    "bearer",
                    &[("authorization", b"Bearer sk_live_1")],
                    Ok(b"sk_live_1"),
                ),
                (
                    "apikey",
                    &[("authorization", b"ApiKey syx_live_1")],
                    Ok(b"syx_live_1"),
                ),
                ("x-api-key", &[("x-api-key", b"crm_1")], Ok(b"crm_1")),
                ("scheme case", &[("authorization", b"bEaReR k")], Ok(b"k")),
                ("apikey case", &[("authorization", b"APIKEY k")], Ok(b"k")),
                (
                    "header case",
                    &[("Authorization", b"Bearer k"), ("X-Api-Key", b"k")],
                    Ok(b"k"),
                ),
                (
                    "tabs and spaces",
                    &[("authorization", b" \tBearer \t k \t")],
                    Ok(b"k"),
                ),
                ("x-api-key padding", &[("x-api-key", b"  k\t")], Ok(b"k")),
            ],
            &ALL,
        );
    }

    #[test]
    fn absent_or_foreign_credentials_are_missing() {
        check(
            &[
                ("no headers", &[], Err(Missing)),
                (
                    "empty authorization",
                    &[("authorization", b"")],
                    Err(Missing),
                ),
                (
                    "glued scheme",
                    &[("authorization", b"Bearerabc")],
                    Err(Missing),
                ),
                (
                    "basic",
                    &[("authorization", b"Basic dXNlcjpwYXNz")],
                    Err(Missing),
                ),
                (
                    "basic then bare bearer",
                    &[("authorization", b"Basic abc, Bearer")],
                    Err(Missing),
                ),
                (
                    "digest",
                    &[("authorization", b"Digest username=\"a\", realm=\"b\"")],
                    Err(Missing),
                ),
                ("underscore name", &[("x_api_key", b"k")], Err(Missing)),
                ("cookie", &[("cookie", b"x-api-key=k")], Err(Missing)),
            ],
            &ALL,
        );
    }

    #[test]
    fn bad_keys_are_malformed() {
        let long = vec![b'a'; 257];
        let longest = vec![b'a'; 256];
        check(
            &[
                (
                    "bare bearer",
                    &[("authorization", b"Bearer")],
                    Err(Malformed),
                ),
                (
                    "bare apikey",
                    &[("authorization", b"ApiKey  ")],
                    Err(Malformed),
                ),
                ("empty x-api-key", &[("x-api-key", b"")], Err(Malformed)),
                (
                    "x-api-key of empty elements",
                    &[("x-api-key", b" , ,")],
                    Err(Malformed),
                ),
                (
                    "comma continues",
                    &[("authorization", b"Bearer a,b")],
                    Err(Malformed),
                ),
                (
                    "inner space",
                    &[("authorization", b"Bearer a b")],
                    Err(Malformed),
                ),
                (
                    "high byte",
                    &[("authorization", b"Bearer a\xffb")],
                    Err(Malformed),
                ),
                ("control", &[("x-api-key", b"a\x01b")], Err(Malformed)),
                ("nul", &[("x-api-key", b"a\x00b")], Err(Malformed)),
                ("257 bytes", &[("x-api-key", &long)], Err(Malformed)),
                ("256 bytes", &[("x-api-key", &longest)], Ok(&longest)),
            ],
            &ALL,
        );
    }

    #[test]
    fn repeated_credentials_are_one_when_equal_and_a_conflict_when_not() {
        check(
            &[
                (
                    "joined same",
                    &[("authorization", b"Bearer a,Bearer a")],
                    Ok(b"a"),
                ),
                (
                    "joined different",
                    &[("authorization", b"Bearer a,Bearer b")],
                    Err(Conflicting),
                ),
                (
                    "two headers",
                    &[("x-api-key", b"a"), ("x-api-key", b"b")],
                    Err(Conflicting),
                ),
                (
                    "two headers same",
                    &[("x-api-key", b"a"), ("x-api-key", b"a")],
                    Ok(b"a"),
                ),
                (
                    "x-api-key list",
                    &[("x-api-key", b"a, b")],
                    Err(Conflicting),
                ),
                ("x-api-key list same", &[("x-api-key", b"a, a,")], Ok(b"a")),
                (
                    "bearer and x-api-key",
                    &[("authorization", b"Bearer a"), ("x-api-key", b"a")],
                    Ok(b"a"),
                ),
                (
                    "either order",
                    &[("x-api-key", b"b"), ("authorization", b"Bearer a")],
                    Err(Conflicting),
                ),
                (
                    "empty takes part",
                    &[("authorization", b"Bearer a"), ("x-api-key", b"")],
                    Err(Conflicting),
                ),
                (
                    "bad second key still conflicts",
                    &[("x-api-key", b"good"), ("x-api-key", b"b\xffad")],
                    Err(Conflicting),
                ),
                (
                    "basic beside bearer",
                    &[("authorization", b"Basic abc, Bearer k")],
                    Ok(b"k"),
                ),
                (
                    "empty list members ignored",
                    &[("authorization", b",, Bearer k ,,")],
                    Ok(b"k"),
                ),
            ],
            &ALL,
        );
    }

    #[test]
    fn disabled_schemes_carry_no_key() {
        let only_x = KeyFormat {
            schemes: Schemes::NONE.with(Scheme::XApiKey),
            prefixes: None,
        };
        check(
            &[
                (
                    "bearer ignored",
                    &[("authorization", b"Bearer a")],
                    Err(Missing),
                ),
                (
                    "bearer beside x-api-key",
                    &[("authorization", b"Bearer a"), ("x-api-key", b"b")],
                    Ok(b"b"),
                ),
            ],
            &only_x,
        );
        let only_bearer = KeyFormat {
            schemes: Schemes::NONE.with(Scheme::Bearer),
            prefixes: None,
        };
        check(
            &[
                (
                    "apikey is another scheme",
                    &[("authorization", b"ApiKey a")],
                    Err(Missing),
                ),
                ("x-api-key ignored", &[("x-api-key", b"a")], Err(Missing)),
            ],
            &only_bearer,
        );
    }

    #[test]
    fn key_prefixes_compare_case_sensitively() {
        let prefixes = vec!["sk_live_".to_owned(), "sk_test_".to_owned()];
        let format = KeyFormat {
            schemes: Schemes::ALL,
            prefixes: Some(&prefixes),
        };
        check(
            &[
                ("live", &[("x-api-key", b"sk_live_x")], Ok(b"sk_live_x")),
                ("test", &[("x-api-key", b"sk_test_x")], Ok(b"sk_test_x")),
                ("upper", &[("x-api-key", b"SK_LIVE_x")], Err(Malformed)),
                ("other", &[("x-api-key", b"crm_x")], Err(Malformed)),
            ],
            &format,
        );
    }

    #[test]
    fn via_bearer_is_set_when_any_credential_came_with_bearer() {
        let pairs: Vec<HeaderPair<'_>> =
            vec![(b"x-api-key", b"k"), (b"authorization", b"Bearer k")];
        let found = extract(&pairs, &ALL).result.unwrap();
        assert!(found.via_bearer);
        let pairs: Vec<HeaderPair<'_>> = vec![(b"authorization", b"ApiKey k")];
        assert!(!extract(&pairs, &ALL).result.unwrap().via_bearer);
    }

    #[test]
    fn other_authorization_elements_are_kept_for_the_upstream() {
        let pairs: Vec<HeaderPair<'_>> =
            vec![(b"authorization", b"Basic abc, Bearer k, Digest a=1, b=2")];
        let found = extract(&pairs, &ALL);
        assert!(found.authorization_had_credential);
        assert_eq!(
            found.other_authorization,
            vec![b"Basic abc".as_slice(), b"Digest a=1, b=2"]
        );
    }

    #[test]
    fn the_key_is_a_slice_of_the_input() {
        let value = b"Bearer sk_live_abc".to_vec();
        let pairs: Vec<HeaderPair<'_>> = vec![(b"authorization", &value)];
        let found = extract(&pairs, &ALL).result.unwrap();
        let range = value.as_ptr_range();
        assert!(range.contains(&found.key.as_ptr()));
    }
}
