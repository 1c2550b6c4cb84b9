//! Table-driven tests of configuration validation: every refusal names its
//! field, and a valid document compiles to what it says.

use super::*;
use crate::credentials::Scheme;
use crate::rate_limit::Limit;
use crate::rules::Requirement;
use crate::scope::MAX_SCOPE_LEN;
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

/// The contract's example configuration.
fn example() -> Value {
    json!({
      "keys": [{
          "id": "key_7Qx2", "sha256": HASH_A, "tenant": "acme",
          "scopes": ["leads:read", "leads:write"], "plan": "pro", "env": "live",
          "expires_at": "2027-01-31T00:00:00Z", "revoked": false,
          "name": "n8n Production", "hint": "sk_live_AbC…9Mn",
          "rate_limits": { "leads:write": { "requests": 10, "period_seconds": 60 } }
      }],
      "plans": {
        "pro": {
          "scopes": ["leads:*", "mcp:*"],
          "rate_limits": {
            "leads:read": { "requests": 600, "period_seconds": 60, "burst": 100 },
            "*": { "requests": 300, "period_seconds": 60 }
          }
        }
      },
      "rules": [
        { "path_prefix": "/healthz", "public": true },
        { "path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read" },
        { "path_prefix": "/api/v1/leads", "methods": ["POST", "PUT", "PATCH"], "scope": "leads:write" },
        { "path": "/api/v1/admin/keys", "scope": "admin" }
      ],
      "schemes": ["bearer", "apikey", "x-api-key"],
      "key_prefixes": ["sk_live_", "sk_test_"],
      "forward_credential": false
    })
}

fn parse(value: &Value) -> Result<Config, ConfigError> {
    Config::parse(value.to_string().as_bytes()).map(|c| c.expect("a configuration"))
}

/// Applies `edit` to the example and expects a refusal naming `field` with
/// `reason` in its text.
fn assert_refused(case: &str, edit: impl FnOnce(&mut Value), field: &str, reason: &str) {
    let mut document = example();
    edit(&mut document);
    match parse(&document) {
        Ok(_) => panic!("case {case:?}: accepted"),
        Err(error) => {
            assert_eq!(error.field, field, "case {case:?}: wrong field in {error}");
            assert!(
                error.reason.contains(reason),
                "case {case:?}: reason {:?} lacks {reason:?}",
                error.reason
            );
        }
    }
}

#[test]
fn the_contract_example_is_valid_and_compiles() {
    let config = parse(&example()).unwrap();
    assert_eq!(config.keys.len(), 1);
    let key = &config.keys[0];
    assert_eq!(key.id, "key_7Qx2");
    assert_eq!(key.hash.to_hex(), HASH_A);
    assert_eq!(config.plan(key.plan).unwrap().name, "pro");
    assert_eq!(key.expires_at, Some(1_801_353_600 * 1_000_000_000));
    assert_eq!(
        key.rate_limits.entries()[0].1,
        Limit {
            requests: 10,
            period_seconds: 60,
            burst: 10
        }
    );
    let plan = &config.plans[0];
    assert_eq!(
        plan.rate_limits.select(Some("leads:read")).unwrap().1.burst,
        100
    );
    assert_eq!(plan.rate_limits.select(Some("other")).unwrap().1.burst, 300);
    assert_eq!(config.schemes, Schemes::ALL);
    assert_eq!(config.realm, "api");
    assert_eq!(config.rate_limit_headers, RateLimitHeaders::Denied);
    assert_eq!(
        config.rules.route(b"GET", b"/api/v1/admin/keys/"),
        Ok(&Requirement::Key {
            scope: Some("admin".into())
        })
    );
}

#[test]
fn empty_or_blank_text_is_the_unconfigured_state() {
    for text in ["", "  \n\t "] {
        assert_eq!(Config::parse(text.as_bytes()), Ok(None), "for {text:?}");
    }
}

#[test]
fn an_empty_object_is_a_configuration_with_no_keys() {
    let config = Config::parse(b"{}").unwrap().unwrap();
    assert!(config.keys.is_empty());
    assert_eq!(config.schemes, Schemes::ALL);
}

#[test]
fn upper_case_hashes_are_folded() {
    let mut document = example();
    document["keys"][0]["sha256"] = json!(HASH_A.to_uppercase());
    assert_eq!(parse(&document).unwrap().keys[0].hash.to_hex(), HASH_A);
}

#[test]
fn key_fields_are_validated_by_name() {
    assert_refused(
        "unknown plan",
        |d| d["keys"][0]["plan"] = json!("gold"),
        "keys[0].plan",
        "unknown plan \"gold\"",
    );
    assert_refused(
        "bad hex",
        |d| d["keys"][0]["sha256"] = json!("zz"),
        "keys[0].sha256",
        "64 hexadecimal",
    );
    assert_refused(
        "bad id",
        |d| d["keys"][0]["id"] = json!("a b"),
        "keys[0].id",
        "A-Z",
    );
    assert_refused(
        "empty id",
        |d| d["keys"][0]["id"] = json!(""),
        "keys[0].id",
        "1 to 64",
    );
    assert_refused(
        "long id",
        |d| d["keys"][0]["id"] = json!("a".repeat(65)),
        "keys[0].id",
        "1 to 64",
    );
    assert_refused(
        "empty tenant",
        |d| d["keys"][0]["tenant"] = json!(""),
        "keys[0].tenant",
        "1 to 128",
    );
    assert_refused(
        "control in tenant",
        |d| d["keys"][0]["tenant"] = json!("a\u{85}b"),
        "keys[0].tenant",
        "control",
    );
    assert_refused(
        "newline in env",
        |d| d["keys"][0]["env"] = json!("li\nve"),
        "keys[0].env",
        "control",
    );
    assert_refused(
        "bad date",
        |d| d["keys"][0]["expires_at"] = json!("tomorrow"),
        "keys[0].expires_at",
        "RFC 3339",
    );
    assert_refused(
        "bad scope",
        |d| d["keys"][0]["scopes"] = json!(["ok", "le*ds"]),
        "keys[0].scopes[1]",
        "`*`",
    );
    assert_refused(
        "missing tenant",
        |d| {
            d["keys"][0].as_object_mut().unwrap().remove("tenant");
        },
        "keys[0]",
        "missing field `tenant`",
    );
    assert_refused(
        "unknown field",
        |d| d["keys"][0]["colour"] = json!("red"),
        "keys[0].colour",
        "unknown field `colour`",
    );
    assert_refused(
        "string revoked",
        |d| d["keys"][0]["revoked"] = json!("yes"),
        "keys[0].revoked",
        "invalid type",
    );
    assert_refused(
        "control in name",
        |d| d["keys"][0]["name"] = json!("a\u{1b}[31m"),
        "keys[0].name",
        "control",
    );
    assert_refused(
        "bad successor id",
        |d| d["keys"][0]["replaced_by"] = json!("key 2"),
        "keys[0].replaced_by",
        "A-Z",
    );
}

#[test]
fn a_rotated_key_may_name_its_successor_even_one_since_deleted() {
    let mut document = example();
    document["keys"][0]["replaced_by"] = json!("key_gone0001");
    assert!(
        parse(&document).is_ok(),
        "replaced_by (the CLI's rotation record) was refused"
    );
}

#[test]
fn duplicate_ids_and_hashes_are_refused() {
    let mut second = example()["keys"][0].clone();
    second["sha256"] = json!(HASH_B);
    assert_refused(
        "duplicate id",
        |d| d["keys"].as_array_mut().unwrap().push(second),
        "keys[1].id",
        "duplicate id",
    );
    let mut second = example()["keys"][0].clone();
    second["id"] = json!("other");
    second["sha256"] = json!(HASH_A.to_uppercase());
    assert_refused(
        "duplicate hash",
        |d| d["keys"].as_array_mut().unwrap().push(second),
        "keys[1].sha256",
        "duplicate sha256",
    );
}

#[test]
fn limits_must_be_positive_and_bounded() {
    assert_refused(
        "zero requests",
        |d| d["plans"]["pro"]["rate_limits"]["*"]["requests"] = json!(0),
        "plans.pro.rate_limits.*.requests",
        "from 1",
    );
    assert_refused(
        "negative period",
        |d| d["plans"]["pro"]["rate_limits"]["*"]["period_seconds"] = json!(-1),
        "plans.pro.rate_limits.*.period_seconds",
        "invalid value",
    );
    assert_refused(
        "fractional",
        |d| d["plans"]["pro"]["rate_limits"]["*"]["requests"] = json!(1.5),
        "plans.pro.rate_limits.*.requests",
        "invalid type",
    );
    assert_refused(
        "zero burst",
        |d| d["keys"][0]["rate_limits"]["leads:write"]["burst"] = json!(0),
        "keys[0].rate_limits.leads:write.burst",
        "from 1",
    );
    assert_refused(
        "huge",
        |d| d["plans"]["pro"]["rate_limits"]["*"]["requests"] = json!(u64::MAX),
        "plans.pro.rate_limits.*.requests",
        "from 1",
    );
    assert_refused(
        "bad pattern",
        |d| d["plans"]["pro"]["rate_limits"]["le*"] = json!({"requests": 1, "period_seconds": 1}),
        "plans.pro.rate_limits.le*",
        "`*`",
    );
    assert_refused(
        "unknown limit field",
        |d| d["plans"]["pro"]["rate_limits"]["*"]["rate"] = json!(1),
        "plans.pro.rate_limits.*.rate",
        "unknown field",
    );
}

#[test]
fn duplicate_object_names_are_refused() {
    let text = r#"{"plans": {"pro": {}, "pro": {"scopes": []}}}"#;
    let error = Config::parse(text.as_bytes()).unwrap_err();
    assert_eq!(error.field, "plans");
    assert!(error.reason.contains("\"pro\" is given twice"), "{error}");
}

#[test]
fn rule_shapes_are_validated() {
    assert_refused(
        "path and prefix",
        |d| d["rules"][0]["path"] = json!("/x"),
        "rules[0]",
        "both path and path_prefix",
    );
    assert_refused(
        "public with scope",
        |d| d["rules"][0]["scope"] = json!("x"),
        "rules[0]",
        "public: true cannot be combined",
    );
    assert_refused(
        "pattern scope",
        |d| d["rules"][1]["scope"] = json!("leads:*"),
        "rules[1].scope",
        "plain name",
    );
    assert_refused(
        "empty methods",
        |d| d["rules"][1]["methods"] = json!([]),
        "rules[1].methods",
        "is empty",
    );
    assert_refused(
        "lower-case method",
        |d| d["rules"][1]["methods"] = json!(["GET", "post"]),
        "rules[1].methods[1]",
        "upper case",
    );
    assert_refused(
        "bad method",
        |d| d["rules"][1]["methods"] = json!(["GE T"]),
        "rules[1].methods[0]",
        "token",
    );
    assert_refused(
        "relative path",
        |d| d["rules"][3]["path"] = json!("api"),
        "rules[3].path",
        "start with /",
    );
    assert_refused(
        "query in path",
        |d| d["rules"][3]["path"] = json!("/a?b"),
        "rules[3].path",
        "query",
    );
    assert_refused(
        "above root",
        |d| d["rules"][3]["path"] = json!("/.."),
        "rules[3].path",
        "climbs",
    );
    assert_refused(
        "parameters in a rule path",
        |d| d["rules"][3]["path"] = json!("/api/v1/admin;v=1/keys"),
        "rules[3].path",
        "parameters",
    );
    assert_refused(
        "unknown rule field",
        |d| d["rules"][0]["prefix"] = json!("/x"),
        "rules[0].prefix",
        "unknown field",
    );
}

#[test]
fn rule_paths_are_stored_canonically() {
    let mut document = example();
    document["rules"] = json!([
        { "path_prefix": "/api//v1/./leads/", "scope": "leads:read" },
        { "path": "/Admin/", "scope": "admin" }
    ]);
    document["case_insensitive_paths"] = json!(true);
    let config = parse(&document).unwrap();
    assert_eq!(
        config.rules.route(b"GET", b"/api/v1/leads/7"),
        Ok(&Requirement::Key {
            scope: Some("leads:read".into())
        })
    );
    assert_eq!(
        config.rules.route(b"GET", b"/ADMIN"),
        Ok(&Requirement::Key {
            scope: Some("admin".into())
        })
    );
}

#[test]
fn case_insensitive_rule_paths_are_ascii_only() {
    assert_refused(
        "non-ASCII rule path, folded",
        |d| {
            d["case_insensitive_paths"] = json!(true);
            d["rules"][3]["path"] = json!("/caf\u{e9}");
        },
        "rules[3].path",
        "above ASCII",
    );
    assert_refused(
        "encoded non-ASCII rule path, folded",
        |d| {
            d["case_insensitive_paths"] = json!(true);
            d["rules"][1]["path_prefix"] = json!("/%E2%84%AAeys");
        },
        "rules[1].path_prefix",
        "above ASCII",
    );
    let mut document = example();
    document["rules"][3]["path"] = json!("/caf\u{e9}");
    assert!(
        parse(&document).is_ok(),
        "a non-ASCII rule path is refused with case-sensitive paths"
    );
}

#[test]
fn top_level_options_are_validated() {
    assert_refused(
        "empty schemes",
        |d| d["schemes"] = json!([]),
        "schemes",
        "is empty",
    );
    assert_refused(
        "unknown scheme",
        |d| d["schemes"] = json!(["bearer", "basic"]),
        "schemes[1]",
        "unknown scheme \"basic\"",
    );
    assert_refused(
        "empty prefixes",
        |d| d["key_prefixes"] = json!([]),
        "key_prefixes",
        "is empty",
    );
    assert_refused(
        "empty prefix",
        |d| d["key_prefixes"] = json!([""]),
        "key_prefixes[0]",
        "never start a key",
    );
    assert_refused(
        "realm quote",
        |d| d["realm"] = json!("a\"b"),
        "realm",
        "without",
    );
    assert_refused(
        "rate limit headers",
        |d| d["rate_limit_headers"] = json!("sometimes"),
        "rate_limit_headers",
        "\"sometimes\"",
    );
    assert_refused(
        "unknown top field",
        |d| d["fleet_mode"] = json!(true),
        "fleet_mode",
        "unknown field",
    );
    assert_refused(
        "wrong top type",
        |d| d["keys"] = json!({}),
        "keys",
        "invalid type",
    );
}

#[test]
fn scheme_names_are_case_insensitive() {
    let mut document = example();
    document["schemes"] = json!(["X-API-Key"]);
    let config = parse(&document).unwrap();
    assert!(config.schemes.contains(Scheme::XApiKey));
    assert!(!config.schemes.reads_authorization());
}

#[test]
fn not_json_is_refused_with_a_position() {
    for text in ["{", "[]", "null", "{\"keys\": []} trailing", "\u{feff}{}"] {
        let error = Config::parse(text.as_bytes()).unwrap_err();
        assert!(!error.reason.is_empty(), "for {text:?}");
    }
}

#[test]
fn a_fleet_is_validated_and_defaults_apply() {
    let mut document = example();
    document["fleet"] = json!({"cluster": "ratelimit", "domain": "apikey"});
    let fleet = parse(&document).unwrap().fleet.unwrap();
    assert_eq!(
        (fleet.timeout_ms, fleet.on_failure),
        (50, crate::fleet::OnFailure::Local)
    );
    assert_refused(
        "fleet no domain",
        |d| d["fleet"] = json!({"cluster": "c"}),
        "fleet",
        "missing field `domain`",
    );
    assert_refused(
        "fleet empty cluster",
        |d| d["fleet"] = json!({"cluster": "", "domain": "d"}),
        "fleet.cluster",
        "cluster",
    );
    assert_refused(
        "fleet timeout",
        |d| d["fleet"] = json!({"cluster": "c", "domain": "d", "timeout_ms": 0}),
        "fleet.timeout_ms",
        "from 1",
    );
    assert_refused(
        "fleet open",
        |d| d["fleet"] = json!({"cluster": "c", "domain": "d", "on_failure": "allow"}),
        "fleet.on_failure",
        "no fail-open",
    );
    assert_refused(
        "fleet period",
        |d| {
            d["fleet"] = json!({"cluster": "c", "domain": "d"});
            d["plans"]["pro"]["rate_limits"]["*"]["period_seconds"] = json!(30);
        },
        "plans.pro.rate_limits.*.period_seconds",
        "1, 60, 3600 or 86400",
    );
}

#[test]
fn istio_cluster_names_are_accepted_for_key_source_and_fleet() {
    // What Istio calls a service's cluster: the only name a WasmPlugin's
    // pluginConfig can give (envoy/istio/key-service.yaml).
    let istio = "outbound|8470||apikey-service.istio-system.svc.cluster.local";
    let source = Config::parse(
        json!({"key_source": {"cluster": istio, "token": "t",
                              "authority": "apikey-service.istio-system.svc.cluster.local"}})
        .to_string()
        .as_bytes(),
    )
    .unwrap_or_else(|error| panic!("key_source.cluster {istio:?} refused: {error}"))
    .and_then(|config| config.key_source)
    .expect("key_source not kept");
    assert_eq!(source.cluster, istio);
    let error = Config::parse(
        json!({"key_source": {"cluster": istio, "token": "t"}})
            .to_string()
            .as_bytes(),
    )
    .map(|_| ())
    .unwrap_err();
    assert_eq!(
        (error.field.as_str(), error.reason.contains("required")),
        ("key_source.authority", true),
        "an Istio cluster name defaulted the authority: {error}"
    );
    let mut document = example();
    document["fleet"] = json!({"cluster": "outbound|8081||ratelimit.istio-system.svc.cluster.local",
                               "domain": "apikey"});
    assert!(
        parse(&document).is_ok(),
        "an Istio fleet cluster was refused"
    );
    for (case, cluster) in [
        (
            "over 120 bytes",
            "outbound|8470||".to_string() + &"a".repeat(106),
        ),
        ("a slash", "outbound|8470||a/b".to_string()),
        ("a space", "outbound|8470|| a".to_string()),
    ] {
        assert_refused(
            case,
            |d| d["fleet"] = json!({"cluster": cluster, "domain": "d"}),
            "fleet.cluster",
            "1 to 120",
        );
    }
}

/// `value` without the object fields that are `null` (which the settings
/// write for fields left out: both read as left out).
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(name, value)| (name, without_nulls(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[test]
fn the_settings_are_the_configuration_without_its_keys() {
    let text = example().to_string();
    let (full, settings) = Config::parse_with_settings(text.as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(full.keys.len(), 1);
    let settings_text = String::from_utf8(settings.clone()).unwrap();
    assert!(
        settings_text.contains(r#""keys":[]"#),
        "keys not emptied in {settings_text}"
    );
    let mut expected = example();
    expected["keys"] = json!([]);
    let reparsed: serde_json::Value = serde_json::from_slice(&settings).unwrap();
    assert_eq!(
        without_nulls(reparsed),
        expected,
        "the settings changed more than `keys`"
    );
    let from_settings = Config::parse(&settings).unwrap().unwrap();
    assert_eq!(
        Config {
            keys: Vec::new(),
            ..full
        },
        from_settings
    );
}

#[test]
fn settings_of_a_document_without_keys_parse_the_same() {
    for text in [r#"{"keys": null, "realm": "r"}"#, r#"{"realm": "r"}"#] {
        let (config, settings) = Config::parse_with_settings(text.as_bytes())
            .unwrap()
            .unwrap();
        assert!(config.keys.is_empty());
        let parsed = Config::parse(&settings).unwrap().unwrap();
        assert_eq!(parsed, config, "settings of {text} parse differently");
    }
}

// --- contract v1.1 §7.2-§7.4 ---------------------------------------------------

#[test]
fn the_v1_1_options_are_off_by_default_and_read_when_given() {
    let config = parse(&example()).unwrap();
    assert_eq!((config.https, config.error_doc_url), (None, None));
    let mut document = example();
    document["require_https"] = json!(true);
    document["trusted_https_header"] = json!("X-Forwarded-Proto");
    document["error_doc_url"] = json!("https://docs.example.com/errors#{code}");
    let config = parse(&document).unwrap();
    assert!(config.https.is_some());
    assert_eq!(
        config
            .error_doc_url
            .map(|url| url.for_code(crate::denial::ErrorCode::NotFound)),
        Some("https://docs.example.com/errors#not_found".to_owned())
    );
}

#[test]
fn the_v1_1_options_are_refused_naming_the_field() {
    let cases: [(&str, Value, &str, &str); 5] = [
        (
            "a trusted header alone",
            json!({"trusted_https_header": "x-forwarded-proto"}),
            "trusted_https_header",
            "require_https",
        ),
        (
            "a credential header",
            json!({"require_https": true, "trusted_https_header": "authorization"}),
            "trusted_https_header",
            "credentials",
        ),
        (
            "require_https not a bool",
            json!({"require_https": "yes"}),
            "require_https",
            "",
        ),
        (
            "plain http doc url",
            json!({"error_doc_url": "http://docs.example.com/{code}"}),
            "error_doc_url",
            "https://",
        ),
        (
            "code twice",
            json!({"error_doc_url": "https://d.example/{code}/{code}"}),
            "error_doc_url",
            "at most once",
        ),
    ];
    for (case, fields, field, reason) in cases {
        assert_refused(
            case,
            |document| {
                for (name, value) in fields.as_object().unwrap() {
                    document[name] = value.clone();
                }
            },
            field,
            reason,
        );
    }
}

#[test]
fn a_tenant_segment_is_one_whole_segment_at_most_once_and_never_public() {
    let mut document = example();
    document["rules"] = json!([
        {"path_prefix": "/api/v1/tenants/{tenant}/leads", "scope": "leads:read"},
        {"path": "/{tenant}", "scope": "leads:read"},
        {"path": "/t/{tenant}/"}
    ]);
    let config = parse(&document).unwrap();
    let tenant = |path: &str| {
        config
            .rules
            .resolve(b"GET", path.as_bytes())
            .unwrap()
            .tenant
    };
    assert_eq!(
        tenant("/api/v1/tenants/acme/leads/7"),
        Some(b"acme".to_vec())
    );
    assert_eq!(tenant("/acme"), Some(b"acme".to_vec()));
    assert_eq!(tenant("/t/acme/"), Some(b"acme".to_vec()));
    let refused: [(&str, Value, &str); 4] = [
        (
            "twice",
            json!({"path": "/t/{tenant}/u/{tenant}"}),
            "at most once",
        ),
        (
            "inside a segment",
            json!({"path": "/t/x{tenant}"}),
            "placeholder",
        ),
        (
            "another name",
            json!({"path_prefix": "/t/{tenant_id}"}),
            "placeholder",
        ),
        (
            "public",
            json!({"path": "/t/{tenant}", "public": true}),
            "public",
        ),
    ];
    for (case, rule, reason) in refused {
        let field = if rule.get("path").is_some() && case != "public" {
            "rules[0].path"
        } else if case == "public" {
            "rules[0]"
        } else {
            "rules[0].path_prefix"
        };
        assert_refused(
            case,
            |document| document["rules"] = json!([rule]),
            field,
            reason,
        );
    }
}

/// Issue 17, finding 4: `"expires_at": "2020-…", "expires_at": null` kept
/// the first value (and so did a top-level and a limit field): a later
/// `null` was read as "left out" before the repeat was noticed. Contract
/// §7.1: a field given twice is refused whatever either value is, at every
/// level of the configuration.
#[test]
fn a_field_given_twice_is_refused_at_every_level_whatever_its_values() {
    // (level, field as the refusal names it, document with FIELD where the
    // repeated field goes, the field's name, a valid value for it)
    let levels: [(&str, &str, &str, &str, &str); 9] = [
        (
            "top level",
            "realm",
            r#"{FIELD, "keys": []}"#,
            "realm",
            r#""api""#,
        ),
        (
            "keys[i]",
            "keys[0].expires_at",
            r#"{"keys": [{"id": "k", "sha256": "HASH", "tenant": "t", FIELD}]}"#,
            "expires_at",
            r#""2020-01-01T00:00:00Z""#,
        ),
        (
            "keys[i] boolean",
            "keys[0].revoked",
            r#"{"keys": [{"id": "k", "sha256": "HASH", "tenant": "t", FIELD}]}"#,
            "revoked",
            "true",
        ),
        (
            "plans.X",
            "plans.pro.scopes",
            r#"{"plans": {"pro": {FIELD}}}"#,
            "scopes",
            r#"["a"]"#,
        ),
        (
            "plan rate limit object",
            "plans.pro.rate_limits.*.burst",
            r#"{"plans": {"pro": {"rate_limits": {"*": {"requests": 5, "period_seconds": 1, FIELD}}}}}"#,
            "burst",
            "2",
        ),
        (
            "key rate limit object",
            "keys[0].rate_limits.a.burst",
            r#"{"keys": [{"id": "k", "sha256": "HASH", "tenant": "t",
                 "rate_limits": {"a": {"requests": 5, "period_seconds": 1, FIELD}}}]}"#,
            "burst",
            "2",
        ),
        (
            "rules[i]",
            "rules[0].scope",
            r#"{"rules": [{"path_prefix": "/admin", FIELD}]}"#,
            "scope",
            r#""admin""#,
        ),
        (
            "fleet",
            "fleet.timeout_ms",
            r#"{"fleet": {"cluster": "c", "domain": "d", FIELD}}"#,
            "timeout_ms",
            "50",
        ),
        ("top-level list", "keys", r#"{FIELD}"#, "keys", "[]"),
    ];
    let mut wrong = Vec::new();
    for (level, field, template, name, value) in levels {
        let template = template.replace("HASH", HASH_A);
        for (first, second) in [
            (value, "null"),
            ("null", value),
            ("null", "null"),
            (value, value),
        ] {
            let text = template.replace(
                "FIELD",
                &format!(r#""{name}": {first}, "{name}": {second}"#),
            );
            let single = template.replace("FIELD", &format!(r#""{name}": {first}"#));
            assert!(
                Config::parse(single.as_bytes()).is_ok(),
                "{level}: the document with the field once is refused: {single}"
            );
            match Config::parse(text.as_bytes()) {
                Ok(_) => wrong.push(format!("{level}: {name} given as {first} then {second} was accepted")),
                Err(error) if error.field != field || !error.reason.contains("given twice") => {
                    wrong.push(format!("{level}: {first} then {second} refused as {error}, not as {field} given twice"))
                }
                Err(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Issue 17, finding 5: a key with hundreds of long scopes was accepted,
/// written with a truncated length and never decoded again, so it
/// silently answered `invalid_key`. Contract §7.1: more than 256 scopes
/// or more than 64 `rate_limits` entries is refused with the field named.
#[test]
fn a_key_with_more_scopes_or_limits_than_a_record_holds_is_refused() {
    let scopes = |count: usize| -> Vec<String> {
        (0..count)
            .map(|i| format!("s{i:03}:{}", "x".repeat(MAX_SCOPE_LEN - 5)))
            .collect()
    };
    let limits = |count: usize| -> Value {
        (0..count)
            .map(|i| {
                (
                    format!("l{i:02}:read"),
                    json!({"requests": 1, "period_seconds": 1}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut at_limit = example();
    at_limit["keys"][0]["scopes"] = json!(scopes(MAX_KEY_SCOPES));
    at_limit["keys"][0]["rate_limits"] = limits(MAX_KEY_LIMITS);
    let config = parse(&at_limit).unwrap_or_else(|e| panic!("256 scopes and 64 limits: {e}"));
    assert_eq!(config.keys[0].scopes.len(), 256);
    assert_eq!(config.keys[0].rate_limits.entries().len(), 64);
    for count in [MAX_KEY_SCOPES + 1, 600] {
        assert_refused(
            &format!("{count} scopes"),
            |d| d["keys"][0]["scopes"] = json!(scopes(count)),
            "keys[0].scopes",
            "at most 256",
        );
    }
    assert_refused(
        "65 limits",
        |d| d["keys"][0]["rate_limits"] = limits(MAX_KEY_LIMITS + 1),
        "keys[0].rate_limits",
        "at most 64",
    );
}

// --- reading (serde_json through config/strict.rs) ------------------------------

/// serde's derive also reads a struct from an array of its field values
/// (serde issue 1587): a key written as `["k", "<hash>", "t"]` must still
/// be refused, at every level that expects an object.
#[test]
fn an_array_is_never_read_as_an_object() {
    let cases = [
        ("the document".to_owned(), "[]".to_owned(), ""),
        (
            "a key".to_owned(),
            format!(r#"{{"keys": [["k", "{HASH_A}", "t"]]}}"#),
            "keys[0]",
        ),
        (
            "a plan".to_owned(),
            r#"{"plans": {"pro": [null, null]}}"#.to_owned(),
            "plans.pro",
        ),
        (
            "a limit".to_owned(),
            r#"{"plans": {"pro": {"rate_limits": {"*": [1, 1, 1]}}}}"#.to_owned(),
            "plans.pro.rate_limits.*",
        ),
        (
            "the plans".to_owned(),
            r#"{"plans": [{"scopes": []}]}"#.to_owned(),
            "plans",
        ),
        (
            "a rule".to_owned(),
            r#"{"rules": [["/x", null, null, true]]}"#.to_owned(),
            "rules[0]",
        ),
        (
            "the fleet".to_owned(),
            r#"{"fleet": ["c", "d"]}"#.to_owned(),
            "fleet",
        ),
    ];
    for (case, text, field) in cases {
        match Config::parse(text.as_bytes()) {
            Ok(_) => panic!("{case}: an array was accepted as an object: {text}"),
            Err(error) => {
                assert_eq!(error.field, field, "{case}: wrong field in {error}");
                assert_eq!(
                    error.reason, "invalid type: sequence, expected an object",
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn malformed_json_is_refused_with_its_line_and_column() {
    let texts: [&[u8]; 14] = [
        b"{\"realm\": \"a\x01\"}",
        br#"{"realm": "\ud800"}"#,
        br#"{"realm": "\udc00"}"#,
        br#"{"realm": "\x"}"#,
        br#"{"realm": "\u12"}"#,
        br#"{"realm": "open"#,
        br#"{"realm": "a",}"#,
        br#"{"schemes": ["bearer",]}"#,
        b"{\"realm\": \"\xff\"}",
        br#"{"forward_credential": tru}"#,
        br#"{"fleet": {"cluster": "c", "domain": "d", "timeout_ms": 01}}"#,
        br#"{"fleet": {"cluster": "c", "domain": "d", "timeout_ms": 1.}}"#,
        br#"{"fleet": {"cluster": "c", "domain": "d", "timeout_ms": -}}"#,
        br#"{"fleet": {"cluster": "c", "domain": "d", "timeout_ms": +1}}"#,
    ];
    for text in texts {
        let shown = String::from_utf8_lossy(text);
        let error = Config::parse(text).expect_err(&format!("{shown} was accepted"));
        assert!(
            error.field.is_empty() && error.reason.contains(" at line 1 column "),
            "{shown}: refused as {error:?}, not as a syntax error with its place"
        );
    }
}

#[test]
fn numbers_other_than_whole_ones_in_range_are_refused_by_field() {
    let cases = [
        ("1.5", "invalid type: floating point `1.5`, expected u64"),
        ("1e3", "invalid type: floating point `1000.0`, expected u64"),
        ("-1", "invalid value: integer `-1`, expected u64"),
        ("18446744073709551616", "invalid type: floating point"),
        ("\"5\"", "invalid type: string \"5\", expected u64"),
    ];
    for (number, reason) in cases {
        let text =
            format!(r#"{{"fleet": {{"cluster": "c", "domain": "d", "timeout_ms": {number}}}}}"#);
        let error = Config::parse(text.as_bytes()).expect_err(&format!("{number} was accepted"));
        assert_eq!(error.field, "fleet.timeout_ms", "{number}: {error}");
        assert!(
            error.reason.starts_with(reason),
            "{number}: reason {:?} does not start with {reason:?}",
            error.reason
        );
    }
    let text = r#"{"fleet": {"cluster": "c", "domain": "d", "timeout_ms": 60000}}"#;
    assert!(
        Config::parse(text.as_bytes()).is_ok(),
        "a whole number in range was refused"
    );
}

/// Escaped strings are decoded, not borrowed: they must compare as what
/// they spell (a plan name, a hash, a scope).
#[test]
fn escaped_strings_mean_what_they_spell() {
    let text = format!(
        r#"{{"keys": [{{"id": "k\u0031", "sha256": "\u0039{}", "tenant": "ac\"me",
            "scopes": ["leads:\u0072ead"], "plan": "p\u0072o"}}],
          "plans": {{"\u0070ro": {{"rate_limits": {{"le\u0061ds:read": {{"requests": 1, "period_seconds": 1}}}}}}}}}}"#,
        &HASH_A[1..]
    );
    let config = Config::parse(text.as_bytes())
        .unwrap_or_else(|error| panic!("escaped strings refused: {error}"))
        .unwrap();
    let key = &config.keys[0];
    assert_eq!((key.id.as_str(), key.tenant.as_str()), ("k1", "ac\"me"));
    assert_eq!(key.hash.to_hex(), HASH_A);
    assert_eq!(key.scopes[0].as_str(), "leads:read");
    assert_eq!(
        config.plan(key.plan).map(|plan| plan.name.as_str()),
        Some("pro")
    );
    assert!(config.plans[0]
        .rate_limits
        .select(Some("leads:read"))
        .is_some());
}

/// The settings empty the top-level `keys` only: a plan named `keys` or
/// `"keys": [`, and strings that needed escapes, come back as they were.
#[test]
fn the_settings_empty_only_the_top_level_keys() {
    let text = format!(
        "{{\n  \"plans\": {{\"keys\": {{}}, \"\\\"keys\\\": [\": {{\"scopes\": [\"a\\u003ab\"]}}}},\n  \"keys\" :\n    [ {{\"id\": \"k\", \"sha256\": \"{HASH_A}\", \"tenant\": \"t\", \"plan\": \"keys\"}} ] ,\n  \"schemes\": [\"bearer\"], \"realm\": \"r\\u0065alm\"\n}}"
    );
    let (config, settings) = Config::parse_with_settings(text.as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(config.keys.len(), 1);
    let mut expected: Value = serde_json::from_str(&text).unwrap();
    expected["keys"] = json!([]);
    let reparsed: Value = serde_json::from_slice(&settings).unwrap();
    assert_eq!(
        without_nulls(reparsed),
        expected,
        "the settings changed more than `keys`"
    );
    let from_settings = Config::parse(&settings).unwrap().unwrap();
    assert_eq!(
        from_settings,
        Config {
            keys: Vec::new(),
            ..config
        }
    );
}
