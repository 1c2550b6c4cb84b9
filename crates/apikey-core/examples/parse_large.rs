//! Times `Config::parse_with_settings` on a generated configuration of N
//! keys shaped like `bench/bench.py`'s `plugin_config` (the bench's
//! configure step parses exactly this), so a change to the reader can be
//! judged before and after on the same machine:
//!
//! ```text
//! cargo run --release -p apikey-core --example parse_large -- 100000 [runs]
//! ```
//!
//! Prints each run's time and the fastest and median, in milliseconds.

use std::fmt::Write as _;
use std::time::Instant;

use apikey_core::config::Config;
use apikey_core::key_hash::KeyHash;

/// The document `bench.py` pushes for `size` keys (compact JSON).
fn plugin_config(size: usize) -> String {
    let mut text = String::with_capacity(size * 200);
    text.push_str(r#"{"keys":["#);
    let key = |text: &mut String, id: &str, raw: &str, tenant: &str, limits: &str| {
        let hash = KeyHash::of(raw.as_bytes()).to_hex();
        let _ = write!(
            text,
            r#"{{"id":"{id}","sha256":"{hash}","tenant":"{tenant}","scopes":["leads:read"],"plan":"pro","env":"live"{limits}}},"#
        );
    };
    key(&mut text, "bench_allowed", "sk_live_bench", "bench", "");
    key(
        &mut text,
        "bench_burst1",
        "sk_live_slow",
        "bench",
        r#","rate_limits":{"*":{"requests":1,"period_seconds":86400,"burst":1}}"#,
    );
    for i in 0..size.saturating_sub(2) {
        let raw = format!("sk_live_filler_{i:010}");
        key(
            &mut text,
            &format!("k{i:07}"),
            &raw,
            &format!("t{}", i % 1000),
            "",
        );
    }
    if text.ends_with(',') {
        text.pop();
    }
    text.push_str(
        r#"],"plans":{"pro":{"scopes":["leads:*"],"rate_limits":{"*":{"requests":1000000000,"period_seconds":1}}}},"rules":[{"path_prefix":"/healthz","public":true},{"path_prefix":"/api/v1/leads","methods":["GET","HEAD"],"scope":"leads:read"},{"path_prefix":"/api/v1/leads","methods":["POST","PUT","PATCH"],"scope":"leads:write"}],"schemes":["bearer","apikey","x-api-key"],"key_prefixes":["sk_live_"]}"#,
    );
    text
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let text = plugin_config(size);
    println!("{size} keys, {} bytes", text.len());
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let start = Instant::now();
        let parsed = Config::parse_with_settings(text.as_bytes());
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        match parsed {
            Ok(Some((config, settings))) => println!(
                "run {run}: {elapsed:.1} ms ({} keys, settings {} bytes)",
                config.keys.len(),
                settings.len()
            ),
            other => {
                eprintln!("the generated configuration was not accepted: {other:?}");
                std::process::exit(1);
            }
        }
        times.push(elapsed);
    }
    times.sort_by(f64::total_cmp);
    let fastest = times.first().copied().unwrap_or_default();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    println!("fastest {fastest:.1} ms, median {median:.1} ms");
}
