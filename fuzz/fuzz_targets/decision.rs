//! The whole decision (contract §3) on arbitrary requests, as the filter
//! makes it: a fixed configuration parsed by `Config::parse`, its keys
//! published into an in-memory shared store by `key_table::publish`, then
//! `Gateway::decide` on a sequence of requests (method, raw path, header
//! map) at arbitrary wall and monotonic clock readings, with CAS conflicts
//! injected as racing workers would cause.
//!
//! The input is the text format of `apikey_fuzz`: one block of header
//! lines per request (`:method`, `:path` and the rest), blocks separated by
//! a blank line. Directives: `@config 1` (first block: the second
//! configuration), `@wall N` (wall clock, ns since the epoch), `@expiry S`
//! / `@expiry_ns N` (wall clock S seconds / N ns from the `expired` key's
//! expiry), `@advance MS` (monotonic step, default 1000 ms), `@mono N`
//! (monotonic ns), `@conflicts N` (CAS conflicts before the request).
//!
//! The oracle does not trust the core: it knows the raw keys, hashes them
//! with its own SHA-256 and states each key's revocation, expiry and scopes
//! itself. Properties, for every request:
//! - `decide` never panics;
//! - a request that needs a key is allowed only when the key the request
//!   presented (extracted as §2 says) hashes to a key in the table, and that
//!   key is neither revoked nor expired at the wall clock, holds the rule's
//!   scope and its plan grants it; the decision names that key's id and the
//!   upstream request carries it in `x-api-key-id`;
//! - a request allowed without a key is one a public rule matched, and
//!   carries no identity header;
//! - every allowed request has every forged identity header removed, in any
//!   spelling, and its credential removed unless `forward_credential`, and
//!   goes upstream with the normalised path (rewritten exactly when
//!   normalisation changed it), one the rules accept (with
//!   `case_insensitive_paths`, a path with a byte above ASCII is not);
//! - a denial's reply never contains a presented key;
//! - over the sequence, the rate-limited key is admitted at most
//!   `burst + rate × (latest − earliest monotonic reading)` times.
#![no_main]

use std::sync::OnceLock;

use apikey_core::config::Config;
use apikey_core::decision::{Clock, Gateway, RequestHead, IDENTITY_HEADERS};
use apikey_core::key_table::{publish, Lineage, Publication};
use apikey_core::memory_store::MemoryStore;
use apikey_core::rules::Requirement;
use apikey_core::{credentials, path};
use apikey_fuzz::{blocks, number};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// 2026-11-25T00:00:00Z, the instant the `expired` key expires.
const EXPIRED_AT_NS: i64 = 1_795_564_800_000_000_000;
/// 2027-01-31T00:00:00Z, the instant the `pro` key expires.
const PRO_EXPIRES_NS: i64 = 1_801_353_600_000_000_000;

/// What the oracle knows of each key, independently of the core.
struct Known {
    raw: &'static str,
    id: &'static str,
    revoked: bool,
    expires_ns: Option<i64>,
    /// The key's own scope patterns.
    held: &'static [&'static str],
    /// Its plan's grant, when the plan narrows keys.
    granted: Option<&'static [&'static str]>,
}

const KEYS: [Known; 7] = [
    Known {
        raw: "sk_live_pro",
        id: "pro",
        revoked: false,
        expires_ns: Some(PRO_EXPIRES_NS),
        held: &["leads:read", "leads:write", "mcp:tools"],
        granted: Some(&["leads:*", "mcp:*"]),
    },
    Known {
        raw: "sk_live_free",
        id: "free",
        revoked: false,
        expires_ns: None,
        held: &["leads:*", "mcp:*"],
        granted: Some(&["leads:read"]),
    },
    Known {
        raw: "sk_live_revoked",
        id: "revoked",
        revoked: true,
        expires_ns: None,
        held: &["*"],
        granted: None,
    },
    Known {
        raw: "sk_live_expired",
        id: "expired",
        revoked: false,
        expires_ns: Some(EXPIRED_AT_NS),
        held: &["*"],
        granted: None,
    },
    Known {
        raw: "sk_live_limited",
        id: "limited",
        revoked: false,
        expires_ns: None,
        held: &["*"],
        granted: None,
    },
    Known {
        raw: "sk_test_admin",
        id: "admin",
        revoked: false,
        expires_ns: None,
        held: &["admin", "leads:read"],
        granted: None,
    },
    Known {
        raw: "crm_tenant_key",
        id: "crm",
        revoked: false,
        expires_ns: None,
        held: &["*"],
        granted: Some(&["crm:*", "leads:read"]),
    },
];

/// The `limited` key's bucket: burst 2, one token per 60 s.
const LIMITED_BURST: u128 = 2;
const LIMITED_PERIOD_NS: u128 = 60_000_000_000;

fn hex_sha256(raw: &str) -> String {
    Sha256::digest(raw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two configurations: the contract's example shape with all schemes, and
/// a narrower one (two schemes, prefixes, case-insensitive paths, the
/// credential forwarded, `RateLimit` headers always).
fn config_text(variant: usize) -> String {
    let h = |i: usize| hex_sha256(KEYS[i].raw);
    let tail = if variant == 0 {
        r#""schemes": ["bearer", "apikey", "x-api-key"]"#
    } else {
        r#""schemes": ["bearer", "x-api-key"], "key_prefixes": ["sk_live_", "sk_test_"],
           "case_insensitive_paths": true, "forward_credential": true,
           "rate_limit_headers": "always", "realm": "fuzz""#
    };
    format!(
        r#"{{
      "keys": [
        {{"id": "pro", "sha256": "{}", "tenant": "acme", "scopes": ["leads:read", "leads:write", "mcp:tools"],
          "plan": "pro", "env": "live", "expires_at": "2027-01-31T00:00:00Z"}},
        {{"id": "free", "sha256": "{}", "tenant": "acme", "scopes": ["leads:*", "mcp:*"], "plan": "free"}},
        {{"id": "revoked", "sha256": "{}", "tenant": "acme", "scopes": ["*"], "revoked": true}},
        {{"id": "expired", "sha256": "{}", "tenant": "acme", "scopes": ["*"], "expires_at": "2026-11-25T00:00:00Z"}},
        {{"id": "limited", "sha256": "{}", "tenant": "t", "scopes": ["*"],
          "rate_limits": {{"*": {{"requests": 1, "period_seconds": 60, "burst": 2}}}}}},
        {{"id": "admin", "sha256": "{}", "tenant": "ops", "scopes": ["admin", "leads:read"], "env": "test"}},
        {{"id": "crm", "sha256": "{}", "tenant": "sydx", "scopes": ["*"], "plan": "crm"}}
      ],
      "plans": {{
        "pro": {{"scopes": ["leads:*", "mcp:*"],
                 "rate_limits": {{"leads:read": {{"requests": 600, "period_seconds": 60, "burst": 100}},
                                  "*": {{"requests": 300, "period_seconds": 60}}}}}},
        "free": {{"scopes": ["leads:read"], "rate_limits": {{"*": {{"requests": 3, "period_seconds": 1}}}}}},
        "crm": {{"scopes": ["crm:*", "leads:read"]}}
      }},
      "rules": [
        {{"path_prefix": "/healthz", "public": true}},
        {{"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"}},
        {{"path_prefix": "/api/v1/leads", "methods": ["POST", "PUT", "PATCH"], "scope": "leads:write"}},
        {{"path": "/mcp", "scope": "mcp:tools"}},
        {{"path": "/api/v1/admin/keys", "scope": "admin"}},
        {{"path_prefix": "/crm", "scope": "crm:contacts"}},
        {{"path": "/public/", "methods": ["GET"], "public": true}}
      ],
      {tail}
    }}"#,
        h(0),
        h(1),
        h(2),
        h(3),
        h(4),
        h(5),
        h(6)
    )
}

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [0, 1].map(
            |variant| match Config::parse(config_text(variant).as_bytes()) {
                Ok(Some(config)) => config,
                other => panic!("the fixed configuration {variant} is refused: {other:?}"),
            },
        )
    })
}

/// Wall-clock default: the instant the `expired` key expires.
const DEFAULT_WALL_NS: i64 = EXPIRED_AT_NS;
/// Monotonic advance between requests when a block does not say.
const DEFAULT_ADVANCE_MS: i128 = 1_000;

struct FuzzClock {
    wall_ns: i64,
    monotonic_ns: u64,
}

impl Clock for FuzzClock {
    fn wall_ns(&self) -> i64 {
        self.wall_ns
    }
    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ns
    }
}

fuzz_target!(|input: &[u8]| run(input));

fn run(input: &[u8]) {
    let requests = blocks(input);
    let variant = requests
        .first()
        .and_then(|b| b.directive("config"))
        .and_then(number)
        .map_or(0, |n| usize::from(n % 2 != 0));
    let config = &configs()[variant];
    let store = MemoryStore::new();
    let table = match publish(
        &store,
        &Lineage::of(b"apikey", b"apikey"),
        &[9; 32],
        config,
        b"",
        &|| 0,
    ) {
        Ok(Publication::Written(table)) => table,
        other => panic!("the fixed configuration did not publish: {other:?}"),
    };
    let gateway = Gateway::new(config.clone(), table);

    let mut monotonic_ns: u64 = 1_000_000_000;
    let (mut earliest, mut latest) = (u64::MAX, 0u64);
    let mut limited_admitted = 0u128;
    for request in requests.iter().take(32) {
        let get = |name| request.directive(name).and_then(number);
        monotonic_ns = match get("mono") {
            Some(mono) => clamp_u64(mono),
            None => {
                let advance = get("advance").unwrap_or(DEFAULT_ADVANCE_MS);
                clamp_u64(i128::from(monotonic_ns) + advance.saturating_mul(1_000_000))
            }
        };
        let wall_ns = match (get("wall"), get("expiry"), get("expiry_ns")) {
            (Some(wall), _, _) => clamp_i64(wall),
            (None, Some(seconds), _) => {
                clamp_i64(i128::from(EXPIRED_AT_NS) + seconds.saturating_mul(1_000_000_000))
            }
            (None, None, Some(nanos)) => clamp_i64(i128::from(EXPIRED_AT_NS) + nanos),
            (None, None, None) => DEFAULT_WALL_NS,
        };
        let clock = FuzzClock {
            wall_ns,
            monotonic_ns,
        };
        earliest = earliest.min(monotonic_ns);
        latest = latest.max(monotonic_ns);
        let conflicts = get("conflicts").map_or(0, |n| clamp_u64(n).min(64) as u32);
        store.inject_conflicts(conflicts);
        let pairs = request.pairs();
        let head = RequestHead::from_pairs(&pairs);
        let decision = gateway.decide(&head, &store, &clock);
        store.inject_conflicts(0);
        if check(config, &gateway, &head, &decision, &clock) == Some("limited") {
            limited_admitted += 1;
        }
    }
    let refill = u128::from(latest.saturating_sub(earliest)) / LIMITED_PERIOD_NS;
    assert!(
        limited_admitted <= LIMITED_BURST + refill,
        "the limited key was admitted {limited_admitted} times in {} ns (burst {LIMITED_BURST})",
        latest.saturating_sub(earliest)
    );
}

fn clamp_u64(n: i128) -> u64 {
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

fn clamp_i64(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

/// Checks one decision; the id of the key it admitted, if any.
fn check(
    config: &Config,
    gateway: &Gateway,
    head: &RequestHead<'_>,
    decision: &apikey_core::decision::Decision,
    clock: &FuzzClock,
) -> Option<&'static str> {
    let format = credentials::KeyFormat {
        schemes: config.schemes,
        prefixes: config.key_prefixes.as_deref(),
    };
    let extraction = credentials::extract(head.headers, &format);
    let allow = match &decision.result {
        Ok(allow) => allow,
        Err(denial) => {
            let reply = gateway.render(denial, head.request_id);
            if let Ok(presented) = &extraction.result {
                assert_key_absent(presented.key, head.request_id, &reply.body);
                for (_, value) in &reply.headers {
                    assert_key_absent(presented.key, head.request_id, value);
                }
            }
            return None;
        }
    };
    let normalised = path::normalise(head.path)
        .unwrap_or_else(|e| panic!("allowed a path the filter refuses: {e:?}"));
    let requirement = config
        .rules
        .route(head.method, &normalised.path)
        .unwrap_or_else(|e| panic!("allowed a path the rules refuse: {e:?}"));
    assert_eq!(
        allow.edits.path,
        normalised.changed().then(|| normalised.target()),
        "the upstream must get the normalised path exactly when it changed"
    );

    // Forged identity headers are gone in every spelling, public or not.
    for &(name, _) in head.headers {
        let folded: Vec<u8> = name
            .iter()
            .map(|&b| {
                if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect();
        let forged = IDENTITY_HEADERS
            .iter()
            .any(|h| h.as_bytes() == folded.as_slice())
            || (name.contains(&b'_') && (folded == b"x-api-key" || folded == b"authorization"));
        if forged {
            assert!(
                allow
                    .edits
                    .remove
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(name)),
                "forged header {:?} is not removed",
                String::from_utf8_lossy(name)
            );
        }
    }
    if !config.forward_credential && extraction.x_api_key_present {
        assert!(
            allow
                .edits
                .remove
                .iter()
                .any(|r| r.eq_ignore_ascii_case(b"x-api-key")),
            "the X-API-Key credential travels upstream"
        );
    }
    if !config.forward_credential && extraction.authorization_had_credential {
        assert!(
            allow
                .edits
                .remove
                .iter()
                .any(|r| r.eq_ignore_ascii_case(b"authorization")),
            "the Authorization credential travels upstream"
        );
    }

    let scope = match requirement {
        Requirement::Public => {
            assert_eq!(decision.key_id, None, "a public request named a key");
            assert!(
                allow.edits.add.is_empty(),
                "a public request got identity headers"
            );
            return None;
        }
        Requirement::Key { scope } => scope.as_deref(),
    };
    let presented = match &extraction.result {
        Ok(presented) => presented,
        Err(error) => panic!("allowed a request that needs a key, with none usable: {error:?}"),
    };
    let digest: [u8; 32] = Sha256::digest(presented.key).into();
    let known = KEYS
        .iter()
        .find(|k| <[u8; 32]>::from(Sha256::digest(k.raw.as_bytes())) == digest)
        .unwrap_or_else(|| {
            panic!(
                "allowed key {:?}, whose SHA-256 is not in the table",
                String::from_utf8_lossy(presented.key)
            )
        });
    assert!(!known.revoked, "allowed revoked key {}", known.id);
    if let Some(expires_ns) = known.expires_ns {
        assert!(
            clock.wall_ns < expires_ns,
            "allowed key {} at {} ns, expired since {expires_ns}",
            known.id,
            clock.wall_ns
        );
    }
    if let Some(scope) = scope {
        assert!(
            known.held.iter().any(|p| covers(p, scope)),
            "allowed key {} without the scope {scope}",
            known.id
        );
        if let Some(granted) = known.granted {
            assert!(
                granted.iter().any(|p| covers(p, scope)),
                "allowed key {} whose plan does not grant {scope}",
                known.id
            );
        }
    }
    assert_eq!(
        decision.key_id.as_deref(),
        Some(known.id),
        "the decision names another key"
    );
    assert!(
        allow
            .edits
            .add
            .iter()
            .any(|(n, v)| *n == "x-api-key-id" && v == known.id),
        "the upstream request does not carry x-api-key-id: {}",
        known.id
    );
    Some(known.id)
}

/// Whether scope pattern `pattern` matches the scope name `scope`.
fn covers(pattern: &str, scope: &str) -> bool {
    pattern == "*"
        || pattern == scope
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with(':') && scope.starts_with(prefix))
}

fn assert_key_absent(key: &[u8], request_id: Option<&[u8]>, text: &str) {
    let contains = |haystack: &[u8]| haystack.windows(key.len()).any(|w| w == key);
    // Only keys shaped like this fixture's: a short key (`a`, `api`) can
    // occur in any reply's fixed text, and a client that sends its key as
    // its own `x-request-id` gets that id echoed back.
    let key_like = [&b"sk_live_"[..], b"sk_test_", b"crm_"]
        .iter()
        .any(|prefix| key.starts_with(prefix));
    if key_like && !request_id.is_some_and(contains) {
        assert!(
            !contains(text.as_bytes()),
            "a reply contains the presented key {:?}",
            String::from_utf8_lossy(key)
        );
    }
}
