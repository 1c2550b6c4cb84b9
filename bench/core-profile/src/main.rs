//! Times each in-VM step of one request through `apikey-core`, as the
//! filter runs them, on the benchmark's own request and configuration
//! (read as JSON from stdin: `{"configuration": "...", "headers": [[n, v]..],
//! "iterations": n}`), and prints a JSON array of `[step, nanoseconds]`, in order.
//!
//! Built for wasm32-wasip1 with the filter's release settings and run under
//! Node (bench/core_profile.mjs), so the figures are V8's, the engine Envoy
//! runs the filter in; host calls are not made here (bench/hostcall-probe
//! measures those in Envoy).

use std::hint::black_box;
use std::io::Read;
use std::time::Instant;

use apikey_core::audit;
use apikey_core::config::Config;
use apikey_core::credentials::{self, KeyFormat};
use apikey_core::decision::{Clock, Gateway, RequestEditor, RequestHead};
use apikey_core::denial::{Denial, ErrorCode};
use apikey_core::header_map;
use apikey_core::host::HostError;
use apikey_core::key_hash::KeyHash;
use apikey_core::key_table::{self, Lineage, Publication, SharedStore};
use apikey_core::memory_store::MemoryStore;
use apikey_core::path;

struct Steady;

impl Clock for Steady {
    fn wall_ns(&self) -> i64 {
        1_700_000_000_000_000_000
    }
    fn monotonic_ns(&self) -> u64 {
        // The bench's clock moves; a fixed one would leave buckets unfilled.
        u64::try_from(Instant::now().elapsed().as_nanos()).unwrap_or(0) + 1_000_000_000
    }
}

struct Discard;

impl RequestEditor for Discard {
    fn remove(&mut self, name: &[u8]) -> Result<(), HostError> {
        black_box(name);
        Ok(())
    }
    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        black_box((name, value));
        Ok(())
    }
    fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        black_box((name, value));
        Ok(())
    }
}

/// Nanoseconds per call of `step`, over `iterations` after as many warm-up
/// calls (V8 tiers a hot function up).
fn time<T>(iterations: u32, mut step: impl FnMut() -> T) -> f64 {
    for _ in 0..iterations {
        black_box(step());
    }
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(step());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| e.to_string())?;
    let spec: serde_json::Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
    let configuration = spec["configuration"].as_str().ok_or("no configuration")?;
    let iterations = u32::try_from(spec["iterations"].as_u64().unwrap_or(20_000)).unwrap_or(20_000);
    let pairs: Vec<(String, String)> = spec["headers"]
        .as_array()
        .ok_or("no headers")?
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or_default().to_owned(),
                pair[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let invalid_key = spec["invalid_key"].as_str().unwrap_or("sk_live_invalid");

    let config = Config::parse(configuration.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("empty configuration")?;
    let store = MemoryStore::new();
    let lineage = Lineage::of(b"apikey", b"apikey");
    let table = match key_table::publish(&store, &lineage, &[1; 32], &config, b"", &|| 1)
        .map_err(|e| format!("{e:?}"))?
    {
        Publication::Written(table) | Publication::Ready(table) => table,
        Publication::Pending => return Err("table pending".into()),
    };
    let format_schemes = config.schemes;
    let prefixes = config.key_prefixes.clone();
    let rules = config.rules.clone();
    let gateway = Gateway::new(config, table);
    let buffer = header_map::serialise(&pairs);
    let parsed = header_map::parse(&buffer).map_err(|_| "header map")?;
    let head = RequestHead::from_pairs(&parsed);
    let format = KeyFormat {
        schemes: format_schemes,
        prefixes: prefixes.as_deref(),
    };
    let key = pairs
        .iter()
        .find(|(n, _)| n == "x-api-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let clock = Steady;
    let store_ref: &dyn SharedStore = &store;
    let decision = gateway.decide(&head, store_ref, &clock);
    if decision.result.is_err() {
        return Err(format!("the bench request is not allowed: {decision:?}"));
    }
    let invalid_pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| {
            let v = if n == "x-api-key" {
                invalid_key.to_owned()
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect();
    let invalid_buffer = header_map::serialise(&invalid_pairs);
    let invalid_parsed = header_map::parse(&invalid_buffer).map_err(|_| "header map")?;
    let invalid_head = RequestHead::from_pairs(&invalid_parsed);

    let steps: Vec<(&str, f64)> = vec![
        (
            "header map parse",
            time(iterations, || header_map::parse(&buffer).map(|p| p.len())),
        ),
        (
            "request head (pseudo-headers, request id)",
            time(iterations, || RequestHead::from_pairs(&parsed).path.len()),
        ),
        (
            "path normalisation",
            time(iterations, || {
                path::normalise(head.path).map(|p| p.path.len())
            }),
        ),
        (
            "rule match",
            time(iterations, || rules.resolve(head.method, head.path).is_ok()),
        ),
        (
            "credential extraction",
            time(iterations, || {
                credentials::extract(&parsed, &format).x_api_key_present
            }),
        ),
        (
            "SHA-256 of the key",
            time(iterations, || KeyHash::of(key.as_bytes()).as_bytes()[0]),
        ),
        (
            "decision, allowed (all of the above, cached record, leased token)",
            time(iterations, || {
                gateway.decide(&head, store_ref, &clock).result.is_ok()
            }),
        ),
        (
            "decision, invalid key (remembered absent)",
            time(iterations, || {
                gateway
                    .decide(&invalid_head, store_ref, &clock)
                    .result
                    .is_ok()
            }),
        ),
        (
            "header edits walked (the host calls themselves not made)",
            time(iterations, || {
                decision
                    .result
                    .as_ref()
                    .map(|allow| allow.edits.apply(&mut Discard).is_ok())
            }),
        ),
        (
            "audit record",
            time(iterations, || audit::record(&decision).len()),
        ),
        (
            "401 body and headers",
            time(iterations, || {
                gateway
                    .render(&Denial::new(ErrorCode::InvalidKey), head.request_id)
                    .body
                    .len()
            }),
        ),
    ];
    // In the order timed (an object's keys would be sorted).
    let out: Vec<serde_json::Value> = steps
        .into_iter()
        .map(|(name, ns)| serde_json::json!([name, (ns * 10.0).round() / 10.0]))
        .collect();
    println!("{}", serde_json::Value::Array(out));
    Ok(())
}
