//! Every row of contract §3, decided against a published table in an
//! in-memory store with a fixed clock.

use super::*;
use crate::key_table::{publish, Lineage, Publication};
use crate::memory_store::MemoryStore;
use crate::timestamp::parse_rfc3339;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

struct FixedClock {
    wall_ns: i64,
    monotonic_ns: u64,
}

impl Clock for FixedClock {
    fn wall_ns(&self) -> i64 {
        self.wall_ns
    }
    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ns
    }
}

fn lineage() -> Lineage {
    Lineage::of(b"apikey", b"apikey")
}

const NOW: &str = "2026-11-25T00:00:00Z";

fn hash(raw: &str) -> String {
    KeyHash::of(raw.as_bytes()).to_hex()
}

fn config_text() -> String {
    format!(
        r#"{{
      "keys": [
        {{"id": "pro", "sha256": "{}", "tenant": "acme", "scopes": ["leads:read", "leads:write", "mcp:tools"],
          "plan": "pro", "env": "live", "expires_at": "2027-01-31T00:00:00Z"}},
        {{"id": "free", "sha256": "{}", "tenant": "acme", "scopes": ["leads:*", "mcp:*"], "plan": "free"}},
        {{"id": "revoked", "sha256": "{}", "tenant": "acme", "revoked": true}},
        {{"id": "expired", "sha256": "{}", "tenant": "acme", "expires_at": "{NOW}"}},
        {{"id": "limited", "sha256": "{}", "tenant": "t", "scopes": ["*"],
          "rate_limits": {{"*": {{"requests": 1, "period_seconds": 60, "burst": 2}}}}}}
      ],
      "plans": {{
        "pro": {{"scopes": ["leads:*", "mcp:*"]}},
        "free": {{"scopes": ["leads:read"]}}
      }},
      "rules": [
        {{"path_prefix": "/healthz", "public": true}},
        {{"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"}},
        {{"path_prefix": "/api/v1/leads", "methods": ["POST"], "scope": "leads:write"}},
        {{"path": "/mcp", "scope": "mcp:tools"}},
        {{"path": "/admin", "scope": "admin"}}
      ]
    }}"#,
        hash("sk_live_pro"),
        hash("sk_live_free"),
        hash("sk_live_revoked"),
        hash("sk_live_expired"),
        hash("sk_live_limited")
    )
}

struct Fixture {
    store: MemoryStore,
    gateway: Gateway,
    clock: FixedClock,
}

fn fixture_with(text: &str) -> Fixture {
    let store = MemoryStore::new();
    let config = Config::parse(text.as_bytes()).unwrap().unwrap();
    let Publication::Written(table) =
        publish(&store, &lineage(), &[1; 32], &config, b"", &|| 0).unwrap()
    else {
        panic!("not written")
    };
    let clock = FixedClock {
        wall_ns: parse_rfc3339(NOW).unwrap(),
        monotonic_ns: 1_000,
    };
    Fixture {
        store,
        gateway: Gateway::new(config, table),
        clock,
    }
}

fn fixture() -> Fixture {
    fixture_with(&config_text())
}

impl Fixture {
    fn decide(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        let mut pairs: Vec<HeaderPair<'_>> =
            vec![(b":method", method.as_bytes()), (b":path", path.as_bytes())];
        pairs.extend(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        self.gateway
            .decide(&RequestHead::from_pairs(&pairs), &self.store, &self.clock)
    }
}

fn code(decision: &Decision) -> Option<&'static str> {
    decision
        .result
        .as_ref()
        .err()
        .map(|denial| denial.code.as_str())
}

#[test]
fn every_denial_row_of_section_3_is_decided() {
    let f = fixture();
    /// Name, method, path, headers, expected error code.
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
    );
    let cases: [Case<'_>; 13] = [
        (
            "invalid path",
            "GET",
            "/api/v1/%2e%2e/%2e%2e/..",
            &[],
            Some("invalid_path"),
        ),
        (
            "missing",
            "GET",
            "/api/v1/leads",
            &[],
            Some("missing_credentials"),
        ),
        (
            "malformed",
            "GET",
            "/api/v1/leads",
            &[("x-api-key", "bad key")],
            Some("malformed_credentials"),
        ),
        (
            "conflicting",
            "GET",
            "/api/v1/leads",
            &[
                ("x-api-key", "sk_live_pro"),
                ("authorization", "Bearer sk_live_free"),
            ],
            Some("conflicting_credentials"),
        ),
        (
            "invalid",
            "GET",
            "/api/v1/leads",
            &[("x-api-key", "sk_live_nobody")],
            Some("invalid_key"),
        ),
        (
            "revoked",
            "GET",
            "/api/v1/leads",
            &[("x-api-key", "sk_live_revoked")],
            Some("key_revoked"),
        ),
        (
            "expired at the instant",
            "GET",
            "/x",
            &[("x-api-key", "sk_live_expired")],
            Some("key_expired"),
        ),
        (
            "insufficient scope",
            "GET",
            "/admin",
            &[("x-api-key", "sk_live_pro")],
            Some("insufficient_scope"),
        ),
        (
            "plan upgrade",
            "POST",
            "/api/v1/leads",
            &[("x-api-key", "sk_live_free")],
            Some("plan_upgrade_required"),
        ),
        (
            "allowed",
            "GET",
            "/api/v1/leads/7",
            &[("x-api-key", "sk_live_pro")],
            None,
        ),
        (
            "allowed no rule",
            "DELETE",
            "/anything",
            &[("authorization", "ApiKey sk_live_free")],
            None,
        ),
        ("public without key", "GET", "/healthz", &[], None),
        (
            "public with a bad key",
            "GET",
            "/healthz",
            &[("x-api-key", "bad key")],
            None,
        ),
    ];
    for (name, method, path, headers, expected) in cases {
        assert_eq!(
            code(&f.decide(method, path, headers)),
            expected,
            "case {name:?}"
        );
    }
}

#[test]
fn denials_before_the_key_is_known_say_nothing_of_keys() {
    let f = fixture();
    let decision = f.decide("GET", "/api/v1/leads", &[("x-api-key", "sk_live_nobody")]);
    assert_eq!((decision.key_id, decision.tenant), (None, None));
    let decision = f.decide("GET", "/admin", &[("x-api-key", "sk_live_pro")]);
    assert_eq!(decision.key_id.as_deref(), Some("pro"));
    assert_eq!(decision.scope.as_deref(), Some("admin"));
}

#[test]
fn scope_denials_carry_the_scope_plan_and_bearer_flag() {
    let f = fixture();
    let denial = f
        .decide("GET", "/admin", &[("authorization", "Bearer sk_live_pro")])
        .result
        .unwrap_err();
    assert_eq!(
        (denial.scope.as_deref(), denial.via_bearer),
        (Some("admin"), true)
    );
    let denial = f
        .decide("POST", "/api/v1/leads", &[("x-api-key", "sk_live_free")])
        .result
        .unwrap_err();
    assert_eq!(
        (denial.scope.as_deref(), denial.plan.as_deref()),
        (Some("leads:write"), Some("free"))
    );
}

#[test]
fn an_allowed_request_gets_identity_headers_and_loses_its_credential() {
    let f = fixture();
    let allow = f
        .decide(
            "GET",
            "/api/v1/leads",
            &[("authorization", "Bearer sk_live_pro")],
        )
        .result
        .unwrap();
    assert_eq!(allow.edits.remove, vec![b"authorization".to_vec()]);
    assert_eq!(allow.edits.authorization, None);
    assert_eq!(
        allow.edits.add,
        vec![
            ("x-api-key-id", "pro".to_owned()),
            ("x-api-tenant", "acme".to_owned()),
            (
                "x-api-scopes",
                "leads:read leads:write mcp:tools".to_owned()
            ),
            ("x-api-plan", "pro".to_owned()),
            ("x-api-env", "live".to_owned()),
        ]
    );
}

#[test]
fn effective_scopes_are_narrowed_by_the_plan() {
    let f = fixture();
    let allow = f
        .decide("GET", "/api/v1/leads", &[("x-api-key", "sk_live_free")])
        .result
        .unwrap();
    assert!(
        allow
            .edits
            .add
            .contains(&("x-api-scopes", "leads:read".to_owned())),
        "{:?}",
        allow.edits.add
    );
}

#[test]
fn forged_identity_headers_are_removed_in_every_spelling_even_on_public_routes() {
    let f = fixture();
    let forged = [
        ("x-api-key-id", "admin"),
        ("X-Api-Tenant", "other"),
        ("x_api_scopes", "*"),
        ("x-api_plan", "scale"),
        ("X_API_ENV", "live"),
        ("x_api_key", "sk_live_pro"),
    ];
    for path in ["/healthz", "/api/v1/leads"] {
        let mut headers = forged.to_vec();
        headers.push(("x-api-key", "sk_live_pro"));
        let allow = f.decide("GET", path, &headers).result.unwrap();
        let removed: Vec<String> = allow
            .edits
            .remove
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        for (name, _) in &forged {
            assert!(
                removed.iter().any(|r| r == name),
                "{path}: {name} not removed from {removed:?}"
            );
        }
        assert!(
            removed.iter().any(|r| r == "x-api-key"),
            "{path}: credential kept"
        );
    }
}

#[test]
fn other_authorization_schemes_are_kept_for_the_upstream() {
    let f = fixture();
    let allow = f
        .decide(
            "GET",
            "/healthz",
            &[("authorization", "Basic abc, Bearer sk_live_pro")],
        )
        .result
        .unwrap();
    assert_eq!(allow.edits.remove, vec![b"authorization".to_vec()]);
    assert_eq!(
        allow.edits.authorization.as_deref(),
        Some(b"Basic abc".as_slice())
    );
    let allow = f
        .decide("GET", "/healthz", &[("authorization", "Basic abc")])
        .result
        .unwrap();
    assert!(
        allow.edits.remove.is_empty(),
        "a foreign Authorization was touched"
    );
}

#[test]
fn forward_credential_keeps_the_credential() {
    let text = config_text().replacen("\"keys\"", "\"forward_credential\": true, \"keys\"", 1);
    let f = fixture_with(&text);
    let allow = f
        .decide("GET", "/api/v1/leads", &[("x-api-key", "sk_live_pro")])
        .result
        .unwrap();
    assert!(allow.edits.remove.is_empty());
}

#[test]
fn a_changed_path_is_rewritten_with_its_query() {
    let f = fixture();
    let allow = f
        .decide(
            "GET",
            "/api//v1/./%6ceads?x=1",
            &[("x-api-key", "sk_live_pro")],
        )
        .result
        .unwrap();
    assert_eq!(
        allow.edits.path.as_deref(),
        Some(b"/api/v1/leads?x=1".as_slice())
    );
    assert_eq!(
        f.decide("GET", "/api/v1/leads?x=1", &[("x-api-key", "sk_live_pro")])
            .result
            .unwrap()
            .edits
            .path,
        None
    );
}

#[test]
fn raw_bytes_above_ascii_go_upstream_percent_encoded() {
    // A Python upstream splits its request line on U+0085 and U+00A0: sent
    // raw, `/api/v1/admin\u{85}` would dodge an `/api/v1/admin` rule here
    // and be served as `/api/v1/admin` there (issue 8's adversarial table).
    let f = fixture();
    let allow = f
        .decide(
            "GET",
            "/x/admin\u{85}?q=\u{a0}",
            &[("x-api-key", "sk_live_pro")],
        )
        .result
        .unwrap();
    assert_eq!(
        allow.edits.path.as_deref(),
        Some("/x/admin%C2%85?q=\u{a0}".as_bytes())
    );
}

#[test]
fn rules_see_the_normalised_path() {
    let f = fixture();
    let decision = f.decide(
        "POST",
        "/api/v1/x/../leads",
        &[("x-api-key", "sk_live_free")],
    );
    assert_eq!(code(&decision), Some("plan_upgrade_required"));
}

#[test]
fn the_burst_is_admitted_then_429_with_its_headers() {
    let f = fixture();
    let headers = [("x-api-key", "sk_live_limited")];
    assert_eq!(code(&f.decide("GET", "/x", &headers)), None);
    assert_eq!(code(&f.decide("GET", "/x", &headers)), None);
    let denial = f.decide("GET", "/x", &headers).result.unwrap_err();
    assert_eq!(denial.code, ErrorCode::RateLimited);
    assert_eq!(denial.scope.as_deref(), Some("*"));
    assert_eq!(denial.retry_after, Some(60));
    let report = denial.rate_limit.unwrap();
    assert_eq!(
        (
            report.pattern.as_str(),
            report.quota,
            report.window_seconds,
            report.remaining
        ),
        ("*", 1, 60, 0)
    );
}

#[test]
fn denials_before_the_rate_limit_step_take_no_token() {
    let f = fixture();
    for _ in 0..5 {
        assert_eq!(
            code(&f.decide(
                "GET",
                "/x",
                &[("x-api-key", "sk_live_limited"), ("x-api-key", "other")]
            )),
            Some("conflicting_credentials")
        );
    }
    assert_eq!(
        code(&f.decide("GET", "/x", &[("x-api-key", "sk_live_limited")])),
        None
    );
}

#[test]
fn ratelimit_headers_on_allowed_responses_only_when_always() {
    let f = fixture();
    assert_eq!(
        f.decide("GET", "/x", &[("x-api-key", "sk_live_limited")])
            .result
            .unwrap()
            .rate_limit,
        None
    );
    let text = config_text().replacen(
        "\"keys\"",
        "\"rate_limit_headers\": \"always\", \"keys\"",
        1,
    );
    let f = fixture_with(&text);
    let report = f
        .decide("GET", "/x", &[("x-api-key", "sk_live_limited")])
        .result
        .unwrap()
        .rate_limit
        .unwrap();
    assert_eq!((report.remaining, report.reset_seconds), (1, 60));
}

#[test]
fn contention_denies_and_is_reported() {
    let f = fixture();
    f.store.inject_conflicts(u32::MAX);
    let decision = f.decide("GET", "/x", &[("x-api-key", "sk_live_limited")]);
    assert_eq!(code(&decision), Some("rate_limited"));
    assert!(decision.contention);
}

// --- contract v1.1 §7.2-§7.4 ---------------------------------------------------

fn seed_config(extra: &str) -> String {
    format!(
        r#"{{
      "keys": [
        {{"id": "acme", "sha256": "{}", "tenant": "acme", "scopes": ["leads:read"],
          "rate_limits": {{"*": {{"requests": 1, "period_seconds": 3600}}}}}},
        {{"id": "spaced", "sha256": "{}", "tenant": "acme corp", "scopes": ["leads:read"]}}
      ],
      "rules": [
        {{"path_prefix": "/healthz", "public": true}},
        {{"path_prefix": "/api/v1/tenants/{{tenant}}/leads", "scope": "leads:read"}},
        {{"path": "/api/v1/tenants/{{tenant}}/admin", "scope": "admin"}}
      ]
      {extra}
    }}"#,
        hash("sk_live_acme"),
        hash("sk_live_spaced"),
    )
}

impl Fixture {
    fn decide_tls(&self, path: &str, headers: &[(&str, &str)], tls: bool) -> Decision {
        let mut pairs: Vec<HeaderPair<'_>> =
            vec![(b":method", b"GET"), (b":path", path.as_bytes())];
        pairs.extend(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let mut head = RequestHead::from_pairs(&pairs);
        head.tls = tls;
        self.gateway.decide(&head, &self.store, &self.clock)
    }
}

#[test]
fn require_https_refuses_plain_requests_first_and_says_whether_a_key_was_exposed() {
    let f = fixture_with(&seed_config(r#", "require_https": true"#));
    assert!(f.gateway.requires_tls_flag());
    let key = [("X-API-Key", "sk_live_acme")];
    /// Path, headers, whether over TLS, the expected code.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool, Option<&'a str>);
    let cases: [Case<'_>; 6] = [
        ("/healthz", &[], false, Some("https_required")),
        (
            "/api/v1/tenants/acme/leads",
            &key,
            false,
            Some("https_required"),
        ),
        // Before the path check: a bad path over plain HTTP is still https_required.
        ("/a/%2F", &key, false, Some("https_required")),
        (
            "/api/v1/tenants/acme/leads",
            &[("x-forwarded-proto", "https"), key[0]],
            false,
            Some("https_required"),
        ),
        ("/healthz", &[], true, None),
        ("/api/v1/tenants/acme/leads", &key, true, None),
    ];
    for (path, headers, tls, expected) in cases {
        let decision = f.decide_tls(path, headers, tls);
        assert_eq!(code(&decision), expected, "{path} {headers:?} tls={tls}");
        if let Err(denial) = &decision.result {
            assert_eq!(
                denial.credential_exposed,
                !headers.is_empty(),
                "{path} {headers:?}"
            );
        }
    }
    let bearer = f.decide_tls(
        "/healthz",
        &[("Authorization", "Bearer not-even-valid")],
        false,
    );
    assert!(bearer.result.is_err_and(|denial| denial.credential_exposed));
    let plain = fixture_with(&seed_config(""));
    assert!(!plain.gateway.requires_tls_flag());
    assert_eq!(code(&plain.decide_tls("/healthz", &[], false)), None);
}

#[test]
fn a_trusted_https_header_counts_as_tls_only_when_configured() {
    let f = fixture_with(&seed_config(
        r#", "require_https": true, "trusted_https_header": "x-forwarded-proto""#,
    ));
    let forwarded = [("x-forwarded-proto", "https")];
    assert_eq!(code(&f.decide_tls("/healthz", &forwarded, false)), None);
    assert_eq!(
        code(&f.decide_tls("/healthz", &[("x-forwarded-proto", "http")], false)),
        Some("https_required")
    );
}

#[test]
fn a_tenant_segment_naming_another_tenant_is_not_found_before_scope_and_limits() {
    let f = fixture_with(&seed_config(""));
    let acme = [("X-API-Key", "sk_live_acme")];
    // Another tenant's leads, and its admin page the key has no scope for:
    // both 404, and neither takes the key's only token.
    for path in [
        "/api/v1/tenants/globex/leads",
        "/api/v1/tenants/globex/admin",
        "/api/v1/tenants/ACME/leads",
        "/api/v1/tenants/acme%20corp/leads",
    ] {
        let decision = f.decide_tls(path, &acme, true);
        assert_eq!(code(&decision), Some("not_found"), "{path}");
        assert_eq!(
            decision.key_id.as_deref(),
            Some("acme"),
            "{path}: audit names the key"
        );
    }
    assert_eq!(
        code(&f.decide_tls("/api/v1/tenants/acme/admin", &acme, true)),
        Some("insufficient_scope")
    );
    assert_eq!(
        code(&f.decide_tls("/api/v1/tenants/acme/leads/7", &acme, true)),
        None
    );
    // The one token was taken only now: the 404s above took none.
    assert_eq!(
        code(&f.decide_tls("/api/v1/tenants/acme/leads", &acme, true)),
        Some("rate_limited")
    );
    let spaced = [("X-API-Key", "sk_live_spaced")];
    assert_eq!(
        code(&f.decide_tls("/api/v1/tenants/acme%20corp/leads", &spaced, true)),
        None
    );
    assert_eq!(
        code(&f.decide_tls("/api/v1/tenants/acme/leads", &spaced, true)),
        Some("not_found")
    );
    // An unknown key is still invalid_key: a 404 needs an authenticated key.
    assert_eq!(
        code(&f.decide_tls(
            "/api/v1/tenants/globex/leads",
            &[("X-API-Key", "sk_live_nobody")],
            true
        )),
        Some("invalid_key")
    );
}

#[test]
fn error_doc_url_links_every_denial_body_to_its_code() {
    let f = fixture_with(&seed_config(
        r#", "error_doc_url": "https://docs.example.com/errors#{code}""#,
    ));
    let decision = f.decide_tls("/api/v1/tenants/acme/leads", &[], true);
    let Err(denial) = &decision.result else {
        panic!("allowed without a key")
    };
    let reply = f.gateway.render(denial, None);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body["error"]["doc_url"],
        "https://docs.example.com/errors#missing_credentials"
    );
}

#[test]
fn two_configurations_with_the_same_key_id_never_share_a_bucket() {
    // Contract §7.1: P and Q in one process (one vm_id), each with a key
    // `limited` (burst 2) of the same hash.
    let store = MemoryStore::new();
    let clock = FixedClock {
        wall_ns: parse_rfc3339(NOW).unwrap(),
        monotonic_ns: 1_000,
    };
    let gateway = |name: &[u8], realm: &str| {
        let lineage = Lineage::of(name, b"apikey");
        let text =
            config_text().replacen("\"keys\"", &format!("\"realm\": \"{realm}\", \"keys\""), 1);
        let config = Config::parse(text.as_bytes()).unwrap().unwrap();
        let Publication::Written(table) =
            publish(&store, &lineage, &[1; 32], &config, b"", &|| 0).unwrap()
        else {
            panic!("{realm}'s table was not written")
        };
        Gateway::new(config, table)
    };
    let (p, q) = (gateway(b"apikey", "p"), gateway(b"partner", "q"));
    let pairs: Vec<HeaderPair<'_>> = vec![
        (b":method", b"GET"),
        (b":path", b"/x"),
        (b"x-api-key", b"sk_live_limited"),
    ];
    let request = RequestHead::from_pairs(&pairs);
    for _ in 0..2 {
        assert_eq!(code(&p.decide(&request, &store, &clock)), None);
    }
    assert_eq!(
        code(&p.decide(&request, &store, &clock)),
        Some("rate_limited")
    );
    for attempt in 0..2 {
        assert_eq!(
            code(&q.decide(&request, &store, &clock)),
            None,
            "Q's request {attempt} took from P's bucket of the same key id"
        );
    }
    assert_eq!(
        code(&q.decide(&request, &store, &clock)),
        Some("rate_limited")
    );
}

/// Records the edits made through it; refuses the `refuse_at`-th (from 1).
struct Editor {
    refuse_at: usize,
    made: Vec<String>,
}

impl Editor {
    fn edit(&mut self, what: String) -> Result<(), HostError> {
        if self.made.len() + 1 == self.refuse_at {
            return Err(HostError::BadArgument);
        }
        self.made.push(what);
        Ok(())
    }
}

impl RequestEditor for Editor {
    fn remove(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.edit(format!("remove {}", String::from_utf8_lossy(name)))
    }
    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        let (name, value) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        self.edit(format!("add {name}: {value}"))
    }
    fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        let (name, value) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        self.edit(format!("replace {name}: {value}"))
    }
}

fn audited(decision: &Decision) -> serde_json::Value {
    serde_json::from_str(&crate::audit::record(decision)).unwrap()
}

#[test]
fn a_forwarded_request_gets_every_edit_in_order_and_is_audited_as_allowed() {
    let f = fixture();
    let mut decision = f.decide(
        "GET",
        "/api/v1/./leads",
        &[
            ("authorization", "Bearer sk_live_pro"),
            ("x-api-tenant", "evil"),
        ],
    );
    let mut editor = Editor {
        refuse_at: 0,
        made: Vec::new(),
    };
    assert_eq!(decision.forward(&mut editor), Ok(()));
    assert_eq!(
        editor.made,
        [
            "remove x-api-tenant",
            "remove authorization",
            "add x-api-key-id: pro",
            "add x-api-tenant: acme",
            "add x-api-scopes: leads:read leads:write mcp:tools",
            "add x-api-plan: pro",
            "add x-api-env: live",
            "replace :path: /api/v1/leads",
        ]
    );
    assert_eq!(audited(&decision)["decision"], "allowed");
}

#[test]
fn an_allowed_request_whose_header_edit_fails_is_audited_as_the_503_it_received() {
    // Issue 17 finding 11: the record said "allowed" while the client got 503.
    for refuse_at in 1..=8 {
        let f = fixture();
        let mut decision = f.decide(
            "GET",
            "/api/v1/./leads",
            &[
                ("authorization", "Bearer sk_live_pro"),
                ("x-api-tenant", "evil"),
            ],
        );
        let mut editor = Editor {
            refuse_at,
            made: Vec::new(),
        };
        assert_eq!(decision.forward(&mut editor), Err(HostError::BadArgument));
        let record = audited(&decision);
        assert_eq!(
            (record["decision"].as_str(), record["key_id"].as_str()),
            (Some("not_configured"), Some("pro")),
            "edit {refuse_at} refused: audited as {record}"
        );
        let denial = decision.result.as_ref().err();
        assert_eq!(
            denial.map(|denial| (denial.code, denial.code.status())),
            Some((ErrorCode::NotConfigured, 503)),
            "edit {refuse_at} refused: the request is not refused with 503"
        );
    }
}

#[test]
fn forwarding_a_denied_decision_edits_nothing() {
    let f = fixture();
    let mut decision = f.decide("GET", "/api/v1/leads", &[]);
    let mut editor = Editor {
        refuse_at: 0,
        made: Vec::new(),
    };
    assert_eq!(decision.forward(&mut editor), Ok(()));
    assert!(
        editor.made.is_empty(),
        "a denial was edited: {:?}",
        editor.made
    );
    assert_eq!(code(&decision), Some("missing_credentials"));
}
