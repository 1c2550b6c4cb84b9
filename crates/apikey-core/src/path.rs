//! Request-path normalisation (contract §5).
//!
//! A scope check is only as good as its agreement with the path the upstream
//! serves: if the filter matched `/api/v1/%72eports` while the upstream
//! served `/api/v1/reports`, a rule written for `/api/v1/reports` would be
//! skipped. So rules see one canonical path, and when it differs from what
//! the client sent, the upstream is sent the canonical path too.
//!
//! Canonical means: query set aside, percent-encoded unreserved characters
//! decoded (other escapes kept, hex upper-cased per RFC 3986 §6.2.2.1), raw
//! bytes 0x80–0xFF percent-encoded, `.` and `..` segments resolved (§5.2.4)
//! and repeated `/` merged. Anything whose meaning an upstream might read
//! differently is refused instead.
//!
//! Path parameters (`;` and what follows it, up to the next `/`) stay in
//! the canonical path, which is what the upstream receives; rules compare
//! the path with them removed ([`without_parameters`], contract §7.1), as
//! Java servlet containers and Spring route it. Only a raw `;` starts a
//! parameter: `%3B` is kept encoded (it is not unreserved) and is data, as
//! in Tomcat, Jetty and Spring, which split parameters off before they
//! decode. A segment that Tomcat's reading (remove parameters, merge `//`,
//! then resolve dot segments) and a literal reading would resolve to
//! different paths is refused: `..;x` and `.;x` (Tomcat's `/public/..;/admin`
//! is `/admin`, the "`..;/`" bypass class), and a `..` that would remove a
//! segment with an empty name and parameters (`/a/;x/../b`: `/b` to Tomcat,
//! `/a/b` here). Jetty refuses the same "ambiguous path parameter".
//!
//! Raw bytes above ASCII are not allowed in a URI (RFC 3986 §2) and upstreams
//! read them differently: Python's `http.server` splits its request line on
//! U+0085 and U+00A0, so `/api/v1/admin\x85` reached a rule-less path in the
//! filter and `/api/v1/admin` upstream. Envoy's `normalize_path` encodes them
//! (its HTTP/1 codec refuses them, HTTP/2 passes them), and so does the
//! filter, so it matches and forwards the same path behind a proxy without
//! that setting.

use std::borrow::Cow;

/// Why a path cannot be matched safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or does not start with `/` (such as `*` or an absolute URI).
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator that upstreams disagree on.
    EncodedSeparator,
    /// A raw `\`, which some servers treat as `/`.
    Backslash,
    /// A control byte (0x00–0x1F, 0x7F), raw or percent-encoded.
    ControlByte,
    /// `%` not followed by two hexadecimal digits.
    MalformedEscape,
    /// A `..` segment that would climb above `/`.
    AboveRoot,
    /// A segment with parameters whose name is `.` or `..` (`..;x`), or a
    /// `..` removing a segment whose name is empty (`;x/..`): servers that
    /// remove parameters before resolving dot segments read it otherwise.
    AmbiguousParameters,
    /// A byte above ASCII, raw or percent-encoded, while paths compare
    /// case-insensitively (`case_insensitive_paths`): upstreams that fold
    /// case in Java or Python fold some of them to ASCII letters (the
    /// Kelvin sign `%E2%84%AA` to `k`), which an ASCII fold cannot follow.
    NonAsciiFolded,
}

impl PathError {
    /// A short reason for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path does not start with /",
            Self::EncodedSeparator => "path holds an encoded / or \\",
            Self::Backslash => "path holds a backslash",
            Self::ControlByte => "path holds a control byte",
            Self::MalformedEscape => "path holds a malformed percent escape",
            Self::AboveRoot => "path climbs above the root",
            Self::AmbiguousParameters => {
                "path holds a dot segment with parameters (such as ..;) or an empty one before .."
            }
            Self::NonAsciiFolded => {
                "path holds a byte above ASCII and paths compare case-insensitively"
            }
        }
    }
}

/// A request target split into its canonical path and its untouched query.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalisedPath<'a> {
    /// The canonical path, borrowed when the client already sent it so.
    pub path: Cow<'a, [u8]>,
    /// Everything from the first `?` on (with the `?`), forwarded unchanged.
    pub query: &'a [u8],
}

impl NormalisedPath<'_> {
    /// Whether the path differs from what the client sent, so `:path` must
    /// be rewritten before the request goes upstream.
    pub fn changed(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }

    /// The full request target to send upstream: canonical path plus query.
    pub fn target(&self) -> Vec<u8> {
        let mut target = Vec::with_capacity(self.path.len() + self.query.len());
        target.extend_from_slice(&self.path);
        target.extend_from_slice(self.query);
        target
    }
}

/// Normalises a request target (`:path`) per contract §5.
pub fn normalise(target: &[u8]) -> Result<NormalisedPath<'_>, PathError> {
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path) {
        // Nearly every request: nothing to decode or resolve, no copy.
        return Ok(NormalisedPath {
            path: Cow::Borrowed(path),
            query,
        });
    }
    let decoded = decode_unreserved(path)?;
    let resolved = resolve_segments(&decoded)?;
    let path = if resolved.as_slice() == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(resolved)
    };
    Ok(NormalisedPath { path, query })
}

/// Whether `path` (absolute, without its query) is already what
/// [`normalise`] would make of it: only bytes that stay as they are (no
/// escape, backslash, control or non-ASCII byte), no empty segment but a
/// trailing one, and no segment named `.` or `..` (with or without
/// parameters, which the full path refuses or resolves).
fn is_canonical(path: &[u8]) -> bool {
    let plain = path
        .iter()
        .all(|&b| (0x21..0x7f).contains(&b) && b != b'%' && b != b'\\');
    if !plain {
        return false;
    }
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || matches!(segment_name(segment), b"." | b"..") {
            return false;
        }
    }
    true
}

/// Checks every byte, decodes `%XX` of unreserved characters and upper-cases
/// the hex of the escapes it keeps.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(PathError::MalformedEscape)?;
                let low = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(PathError::MalformedEscape)?;
                let decoded = high << 4 | low;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0x00..=0x1F | 0x7F => return Err(PathError::ControlByte),
                    _ if is_unreserved(decoded) => out.push(decoded),
                    _ => out.extend_from_slice(&[b'%', hex_digit(high), hex_digit(low)]),
                }
            }
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x1F | 0x7F => return Err(PathError::ControlByte),
            0x80..=0xFF => {
                out.extend_from_slice(&[b'%', hex_digit(byte >> 4), hex_digit(byte & 0x0F)])
            }
            _ => out.push(byte),
        }
    }
    Ok(out)
}

/// Resolves `.` and `..` segments and merges repeated `/`. A trailing `/`
/// is kept, and a path ending in a dot segment ends in `/` (RFC 3986
/// §5.2.4: `/a/b/..` is `/a/`).
///
/// Path parameters are kept, but a segment is judged by its name (what
/// precedes its first `;`) too, so that no path resolves one way here and
/// another way in a server that removes parameters first (see the module
/// documentation): refusing is the only answer safe for both readings.
fn resolve_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                let removed = segments.pop().ok_or(PathError::AboveRoot)?;
                if segment_name(removed).is_empty() {
                    return Err(PathError::AmbiguousParameters);
                }
                trailing_slash = true;
            }
            _ => {
                if matches!(segment_name(segment), b"." | b"..") {
                    return Err(PathError::AmbiguousParameters);
                }
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// A segment's name: what precedes its first `;` (all of it without one).
fn segment_name(segment: &[u8]) -> &[u8] {
    segment.split(|&b| b == b';').next().unwrap_or(segment)
}

/// The path rules compare (contract §7.1): a normalised path with every
/// segment's parameters removed, and the segments left with no name
/// dropped as repeated `/` are (`/a/;x/b` is `/a/b`, as Tomcat merges the
/// `//` it leaves). Borrowed when the path has no `;`.
pub fn without_parameters(normalised: &[u8]) -> Cow<'_, [u8]> {
    if !normalised.contains(&b';') {
        return Cow::Borrowed(normalised);
    }
    let mut out = Vec::with_capacity(normalised.len());
    let mut trailing_slash = false;
    // The first piece is what precedes the leading `/`: nothing.
    for segment in normalised.split(|&b| b == b'/').skip(1) {
        let name = segment_name(segment);
        if name.is_empty() {
            trailing_slash = true;
        } else {
            out.push(b'/');
            out.extend_from_slice(name);
            trailing_slash = false;
        }
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// The upper-case hex digit of a nibble (0–15).
fn hex_digit(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'A' + (nibble & 0x0F).saturating_sub(10),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn canonical(target: &str) -> Result<(String, String), PathError> {
        normalise(target.as_bytes()).map(|n| {
            (
                String::from_utf8(n.path.to_vec()).unwrap(),
                String::from_utf8(n.query.to_vec()).unwrap(),
            )
        })
    }

    #[test]
    fn canonical_paths_come_back_borrowed_and_unchanged() {
        for target in [
            "/",
            "/api/v1/leads",
            "/api/v1/leads/",
            "/a%20b",
            "/a?x=%2F&y=..",
            "/~a-b_c.d",
        ] {
            let normalised = normalise(target.as_bytes()).unwrap();
            assert!(
                !normalised.changed(),
                "{target} was rewritten to {:?}",
                normalised.path
            );
            assert_eq!(normalised.target(), target.as_bytes());
        }
    }

    #[test]
    fn paths_normalise_as_contract_section_5_says() {
        let cases = [
            ("/api/v1/%72eports", "/api/v1/reports"),
            ("/api/v1/%2e%2e/admin", "/api/admin"),
            ("/api/%2E/v1", "/api/v1"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../c", "/a/c"),
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/%41%7e", "/A~"),
            ("/a%20b", "/a%20b"),
        ];
        for (input, expected) in cases {
            let (path, _) = canonical(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(path, expected, "normalising {input}");
        }
    }

    #[test]
    fn kept_escapes_have_upper_case_hex() {
        assert_eq!(canonical("/a%2ab%c3%a9").unwrap().0, "/a%2Ab%C3%A9");
    }

    #[test]
    fn the_query_is_set_aside_untouched() {
        assert_eq!(
            canonical("/a/../b?next=/../x%2F").unwrap(),
            ("/b".to_owned(), "?next=/../x%2F".to_owned())
        );
        let normalised = normalise(b"/a/../b?q").unwrap();
        assert_eq!(normalised.target(), b"/b?q");
    }

    #[test]
    fn unsafe_paths_are_refused_with_their_reason() {
        let cases: [(&[u8], PathError); 16] = [
            (b"", PathError::NotAbsolute),
            (b"*", PathError::NotAbsolute),
            (b"api/v1", PathError::NotAbsolute),
            (b"?a", PathError::NotAbsolute),
            (b"/a%2Fb", PathError::EncodedSeparator),
            (b"/a%2fb", PathError::EncodedSeparator),
            (b"/a%5Cb", PathError::EncodedSeparator),
            (b"/a%5cb", PathError::EncodedSeparator),
            (b"/a\\b", PathError::Backslash),
            (b"/a\0b", PathError::ControlByte),
            (b"/a\x7fb", PathError::ControlByte),
            (b"/a%00", PathError::ControlByte),
            (b"/a%", PathError::MalformedEscape),
            (b"/a%4", PathError::MalformedEscape),
            (b"/a%zz", PathError::MalformedEscape),
            (b"/..", PathError::AboveRoot),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalise(input).map(|_| ()),
                Err(expected),
                "for {:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            normalise(b"/a/../..").map(|_| ()),
            Err(PathError::AboveRoot)
        );
        assert_eq!(
            normalise(b"/%2e%2e/x").map(|_| ()),
            Err(PathError::AboveRoot)
        );
        assert_eq!(
            normalise(b"/a\r\nb").map(|_| ()),
            Err(PathError::ControlByte)
        );
    }

    /// Issue 17, finding 2: Tomcat removes path parameters and then
    /// resolves dot segments, so `/public/..;x=1/admin` is `/admin` there,
    /// while a server that keeps `..;x=1` as a name serves a path under
    /// `/public`. No rule can be matched safely for both readings.
    #[test]
    fn a_dot_segment_with_parameters_is_refused() {
        for input in [
            "/public/..;x=1/admin",
            "/public/..;/admin",
            "/public/.;x/admin",
            "/public/.;/admin",
            "/public/%2e%2e;x=1/admin",
            "/public/.%2E;/admin",
            "/..;",
            "/a/..;x",
            // Tomcat also merges the `//` left of an empty-named segment
            // before resolving, so this `..` removes `public` there and
            // `;x` here.
            "/public/;x/../admin",
            "/public/;/../admin",
        ] {
            assert_eq!(
                normalise(input.as_bytes()).map(|n| n.path),
                Err(PathError::AmbiguousParameters),
                "normalising {input}"
            );
        }
    }

    #[test]
    fn parameters_are_kept_in_the_normalised_path() {
        let cases = [
            ("/a;x=1/b", "/a;x=1/b"),
            ("/a/b;x/../c;y", "/a/c;y"),
            ("/a/;x/b", "/a/;x/b"),
            ("/a/...;x/b", "/a/...;x/b"),
            ("/a/%3B/b", "/a/%3B/b"),
            ("/a/%3b..;x", "/a/%3B..;x"),
        ];
        for (input, expected) in cases {
            let (path, _) = canonical(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(path, expected, "normalising {input}");
        }
    }

    #[test]
    fn rules_see_the_path_without_its_parameters() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a;x=1", "/a"),
            ("/a;x=1/b;y;z/", "/a/b/"),
            ("/a;/b", "/a/b"),
            ("/;x", "/"),
            ("/a/;x", "/a/"),
            ("/a/;x/b", "/a/b"),
            ("/a%3Bx/b", "/a%3Bx/b"),
        ];
        for (normalised, expected) in cases {
            assert_eq!(
                without_parameters(normalised.as_bytes()).as_ref(),
                expected.as_bytes(),
                "parameters removed from {normalised}"
            );
        }
        assert!(matches!(without_parameters(b"/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn normalisation_is_idempotent_on_tricky_inputs() {
        for input in [
            "/a/%2e%2e/%2E/b//c/.",
            "/%7Euser/./%61%62/..",
            "/x/%25/y",
            "/a%2a/",
        ] {
            let once = normalise(input.as_bytes()).unwrap();
            let twice = normalise(&once.path).unwrap();
            assert_eq!(once.path, twice.path, "normalising {input} twice");
            assert!(!twice.changed());
        }
    }

    #[test]
    fn raw_bytes_above_ascii_are_percent_encoded_so_no_rule_is_dodged() {
        // Issue 8's adversarial table: over HTTP/2 without Envoy's
        // normalize_path, `/api/v1/admin\x85` skipped an `/api/v1/admin`
        // rule and a Python upstream served `/api/v1/admin`.
        let cases: [(&[u8], &str); 4] = [
            (b"/api/v1/admin\x85", "/api/v1/admin%85"),
            (b"/api/v1/admin\xa0", "/api/v1/admin%A0"),
            ("/caf\u{e9}".as_bytes(), "/caf%C3%A9"),
            (b"/\x80\xff/%c3%a9", "/%80%FF/%C3%A9"),
        ];
        for (input, expected) in cases {
            let normalised = normalise(input).unwrap();
            assert_eq!(
                normalised.path.as_ref(),
                expected.as_bytes(),
                "normalising {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(normalised.changed(), "{expected}: :path must be rewritten");
        }
        // The query is still forwarded as sent.
        assert_eq!(normalise(b"/a?\xff").unwrap().query, b"?\xff");
        // Raw and encoded spellings are one path, so a rule matches both.
        assert_eq!(
            normalise("/caf\u{e9}".as_bytes()).unwrap().path,
            normalise(b"/caf%c3%a9").unwrap().path
        );
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The full normalisation, without the shortcut.
    fn slow(path: &[u8]) -> Result<Vec<u8>, PathError> {
        resolve_segments(&decode_unreserved(path)?)
    }

    #[test]
    fn the_shortcut_takes_only_paths_the_full_normalisation_leaves_unchanged() {
        let samples: &[&[u8]] = &[
            b"/",
            b"/a",
            b"/a/",
            b"/api/v1/leads",
            b"/a;x/b",
            b"/a/b;p=1/",
            b"//a",
            b"/a//b",
            b"/a/./b",
            b"/a/../b",
            b"/.",
            b"/..",
            b"/a/.;x/b",
            b"/a/..;x",
            b"/a/%41",
            b"/a%2fb",
            b"/a\\b",
            b"/a b",
            b"/caf\xc3\xa9",
            b"/a/.b",
            b"/a/b..",
            b"/~user/x-y_z",
            b"/a/..b/",
            b"/a:b@c!$&'()*+,=",
            b"/a/b/",
            b"/a/;/b",
            b"/;",
            b"/a/.../b",
        ];
        let mut taken = 0;
        for &path in samples {
            if is_canonical(path) {
                taken += 1;
                assert_eq!(
                    slow(path).as_deref(),
                    Ok(path),
                    "{:?} taken as canonical but normalised otherwise",
                    String::from_utf8_lossy(path)
                );
            }
        }
        assert!(taken >= 10, "the shortcut took only {taken} samples");
        assert!(!is_canonical(b"//a") && !is_canonical(b"/a/./b") && !is_canonical(b"/a%2fb"));
    }
}
