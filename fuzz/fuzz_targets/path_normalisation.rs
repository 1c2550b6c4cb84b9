//! Path normalisation (contract §5) on arbitrary request targets.
//!
//! Properties, for every input:
//! - `normalise` never panics;
//! - an accepted path is canonical: it starts with `/`, holds no `//`,
//!   `/./` or `/../`, does not end in `/.` or `/..`, holds no `?`, `\`,
//!   control byte, raw byte above ASCII or encoded `/` or `\`, keeps no
//!   escape of an unreserved character and spells every kept escape in
//!   upper-case hex;
//! - it is idempotent: normalising the output again gives the same path and
//!   reports no change;
//! - the query (from the first `?`) is set aside byte for byte, and the
//!   upstream target is the canonical path followed by it;
//! - a path reported unchanged is exactly what the client sent;
//! - an accepted input held no raw `\`, control byte or encoded separator;
//! - no segment of an accepted path is named `.` or `..` once its
//!   parameters (`;` on) are removed, so servers that remove them before
//!   resolving dot segments (Tomcat) resolve it as the filter did;
//! - the path rules compare (`without_parameters`, contract §7.1) holds no
//!   `;`, no empty or dot segment, keeps every segment's name in order,
//!   and is its own parameter-free form.
#![no_main]

use apikey_core::path::{normalise, without_parameters};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|target: &[u8]| check(target));

fn check(target: &[u8]) {
    let Ok(once) = normalise(target) else {
        return;
    };
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (sent_path, sent_query) = target.split_at(split);
    let path: &[u8] = &once.path;

    assert_eq!(
        once.query, sent_query,
        "the query must be set aside unchanged"
    );
    assert_eq!(
        once.target(),
        [path, sent_query].concat(),
        "target = path + query"
    );
    if !once.changed() {
        assert_eq!(path, sent_path, "an unchanged path must be the one sent");
    }
    assert_canonical(path);
    assert_input_was_safe(sent_path);
    assert_rule_view(path);

    let twice = normalise(path).unwrap_or_else(|e| {
        panic!(
            "normalised path {:?} refused: {e:?}",
            String::from_utf8_lossy(path)
        )
    });
    assert_eq!(
        twice.path.as_ref(),
        path,
        "normalisation must be idempotent"
    );
    assert!(
        !twice.changed(),
        "a canonical path must come back unchanged"
    );
    assert!(twice.query.is_empty());
}

fn assert_canonical(path: &[u8]) {
    let shown = String::from_utf8_lossy(path);
    assert_eq!(path.first(), Some(&b'/'), "{shown:?} must start with /");
    for bad in [&b"//"[..], b"/./", b"/../"] {
        assert!(
            !path.windows(bad.len()).any(|w| w == bad),
            "{shown:?} holds {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(
        !path.ends_with(b"/.") && !path.ends_with(b"/.."),
        "{shown:?} ends in a dot segment"
    );
    assert!(
        path.split(|&b| b == b'/').all(|s| s != b"." && s != b".."),
        "{shown:?} holds a dot segment"
    );
    assert!(
        !path
            .iter()
            .any(|&b| b == b'?' || b == b'\\' || b < 0x20 || b >= 0x7F),
        "{shown:?} holds ?, \\, a control byte or a raw byte above ASCII"
    );
    let mut rest = path;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let escape = rest
            .get(at + 1..at + 3)
            .unwrap_or_else(|| panic!("{shown:?} holds a truncated escape"));
        assert!(
            escape
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{shown:?} keeps an escape not in upper-case hex"
        );
        let byte = u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("00"), 16).unwrap_or(0);
        assert!(
            !(byte.is_ascii_alphanumeric()
                || b"-._~/\\".contains(&byte)
                || byte < 0x20
                || byte == 0x7F),
            "{shown:?} keeps the escape %{} (unreserved, a separator or a control byte)",
            String::from_utf8_lossy(escape)
        );
        rest = &rest[at + 3..];
    }
}

/// The name of a segment: what precedes its first `;`.
fn name(segment: &[u8]) -> &[u8] {
    segment.split(|&b| b == b';').next().unwrap_or(segment)
}

fn assert_rule_view(path: &[u8]) {
    let shown = String::from_utf8_lossy(path);
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/').skip(1).collect();
    for segment in &segments {
        assert!(
            name(segment) != b"." && name(segment) != b"..",
            "{shown:?} holds a dot segment with parameters"
        );
    }
    let view = without_parameters(path);
    let view_shown = String::from_utf8_lossy(&view);
    assert_eq!(view.first(), Some(&b'/'), "{view_shown:?} must start with /");
    assert!(!view.contains(&b';'), "{view_shown:?} kept a parameter");
    assert!(
        !view.windows(2).any(|w| w == b"//"),
        "{view_shown:?} holds an empty segment"
    );
    let names: Vec<&[u8]> = segments
        .iter()
        .map(|segment| name(segment))
        .filter(|name| !name.is_empty())
        .collect();
    let view_names: Vec<&[u8]> = view
        .split(|&b| b == b'/')
        .filter(|name| !name.is_empty())
        .collect();
    assert_eq!(
        view_names, names,
        "{view_shown:?} lost or changed a segment name of {shown:?}"
    );
    assert_eq!(
        without_parameters(&view).as_ref(),
        view.as_ref(),
        "removing parameters twice changed {view_shown:?}"
    );
    if !path.contains(&b';') {
        assert_eq!(view.as_ref(), path, "a path without parameters changed");
    }
}

fn assert_input_was_safe(sent_path: &[u8]) {
    let shown = String::from_utf8_lossy(sent_path);
    assert!(
        !sent_path
            .iter()
            .any(|&b| b == b'\\' || b < 0x20 || b == 0x7F),
        "{shown:?} was accepted with a backslash or a control byte"
    );
    let lower = sent_path.to_ascii_lowercase();
    for separator in [&b"%2f"[..], b"%5c"] {
        assert!(
            !lower.windows(3).any(|w| w == separator),
            "{shown:?} was accepted with an encoded separator"
        );
    }
}
