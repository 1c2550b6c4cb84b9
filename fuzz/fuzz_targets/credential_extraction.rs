//! Credential extraction (contract §2) from arbitrary header maps.
//!
//! The input is the text format of `apikey_fuzz` (one `name: value` line
//! per header, `\xHH` for any byte, a blank line between maps), with the
//! key format set per map by `@schemes bearer,apikey,x-api-key` and
//! `@prefixes sk_live_,sk_test_` (all schemes and no prefixes otherwise).
//!
//! Properties, for every header map and every key format:
//! - `extract` never panics;
//! - a key it returns lies byte for byte inside the value of an
//!   `Authorization` or `X-API-Key` header of the input (checked by
//!   address, so it cannot be a copy that merely looks alike);
//! - a returned key is well formed: 1–256 visible ASCII bytes, no comma,
//!   starting with a configured prefix when there are any;
//! - a header whose name holds `_` has no effect at all: extraction from the
//!   map without those headers gives the same answer;
//! - each kept `Authorization` element lies inside an `Authorization` value.
#![no_main]

use apikey_core::credentials::{extract, KeyFormat, Scheme, Schemes, MAX_KEY_LEN};
use apikey_core::header_map::HeaderPair;
use apikey_fuzz::{blocks, list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    for block in blocks(input) {
        let schemes = block.directive("schemes").map_or(Schemes::ALL, |names| {
            let mut schemes = Schemes::NONE;
            for name in list(names) {
                if let Some(scheme) = Scheme::from_config_name(&name) {
                    schemes = schemes.with(scheme);
                }
            }
            // A configuration refuses an empty scheme list.
            if schemes.is_empty() {
                Schemes::ALL
            } else {
                schemes
            }
        });
        // A configuration refuses an empty prefix list.
        let prefixes = block.directive("prefixes").map(list);
        let format = KeyFormat {
            schemes,
            prefixes: prefixes.as_deref(),
        };
        check(&block.pairs(), &format);
    }
});

fn check(pairs: &[HeaderPair<'_>], format: &KeyFormat<'_>) {
    let extraction = extract(pairs, format);

    if let Ok(presented) = &extraction.result {
        let key = presented.key;
        let shown = String::from_utf8_lossy(key);
        assert!(
            pairs
                .iter()
                .any(|&(name, value)| is_credential_header(name) && within(value, key)),
            "key {shown:?} is not inside any credential header value"
        );
        assert!(
            !key.is_empty() && key.len() <= MAX_KEY_LEN,
            "key length {}",
            key.len()
        );
        assert!(
            key.iter().all(|&b| (0x21..=0x7E).contains(&b) && b != b','),
            "key {shown:?} holds a byte outside visible ASCII or a comma"
        );
        if let Some(prefixes) = format.prefixes {
            assert!(
                prefixes.iter().any(|p| key.starts_with(p.as_bytes())),
                "key {shown:?} has none of the prefixes {prefixes:?}"
            );
        }
    }
    for element in &extraction.other_authorization {
        assert!(
            pairs.iter().any(|&(name, value)| {
                name.eq_ignore_ascii_case(b"authorization") && within(value, element)
            }),
            "a kept Authorization element is not inside an Authorization value"
        );
    }

    let without_underscores: Vec<HeaderPair<'_>> = pairs
        .iter()
        .copied()
        .filter(|(name, _)| !name.contains(&b'_'))
        .collect();
    assert_eq!(
        extraction,
        extract(&without_underscores, format),
        "a header whose name holds `_` changed what was extracted"
    );
}

fn is_credential_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"x-api-key")
}

/// Whether `inner` lies inside `outer` by address (not merely equal bytes
/// elsewhere); then it is also byte for byte a substring of it.
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (outer_start, inner_start) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner_start >= outer_start && inner_start + inner.len() <= outer_start + outer.len()
}
