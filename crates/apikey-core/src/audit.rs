//! The per-request audit record, for Envoy's access log.
//!
//! The filter stores one compact JSON object per request in filter state
//! (`wasm.apikey`), one host call, which access logs print with
//! `%FILTER_STATE(wasm.apikey:PLAIN)%`: which key (by id, never the key),
//! which tenant, the scope the route required, the decision and whether it
//! was a rate limit. The CLI's `usage` command reads it back.

use crate::decision::Decision;
use crate::denial::{push_json_string, ErrorCode};

/// The filter-state name the record is stored under (Envoy prefixes
/// `wasm.`).
pub const FILTER_STATE_NAME: &str = "apikey";

/// The audit record of a decision, as JSON.
pub fn record(decision: &Decision) -> String {
    let code = decision.result.as_ref().err().map(|denial| denial.code);
    let mut out = String::with_capacity(128);
    out.push_str("{\"key_id\":");
    push_optional(&mut out, decision.key_id.as_deref());
    out.push_str(",\"tenant\":");
    push_optional(&mut out, decision.tenant.as_deref());
    out.push_str(",\"scope\":");
    push_optional(&mut out, decision.scope.as_deref());
    out.push_str(",\"decision\":\"");
    out.push_str(code.map_or("allowed", ErrorCode::as_str));
    out.push_str("\",\"rate_limited\":");
    out.push_str(if code == Some(ErrorCode::RateLimited) {
        "true"
    } else {
        "false"
    });
    out.push('}');
    out
}

/// The audit record of a request refused before any configuration.
pub fn not_configured() -> String {
    r#"{"key_id":null,"tenant":null,"scope":null,"decision":"not_configured","rate_limited":false}"#
        .to_owned()
}

/// Key ids, tenants and scopes are validated configuration values (no
/// control characters, no `"` in ids or scopes); tenants may hold `"` or
/// `\`, so everything is escaped all the same, by the bodies' escaper.
fn push_optional(out: &mut String, value: Option<&str>) {
    match value {
        None => out.push_str("null"),
        Some(value) => push_json_string(out, value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Allow;
    use crate::denial::Denial;
    use serde_json::{json, Value};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn decision(result: Result<Allow, Denial>, key: Option<&str>) -> Decision {
        Decision {
            result,
            key_id: key.map(str::to_owned),
            tenant: key.map(|_| "ac\"me".to_owned()),
            scope: Some("leads:read".to_owned()),
            cas_conflicts: 0,
            contention: false,
        }
    }

    #[test]
    fn an_allowed_request_records_key_tenant_scope_and_decision() {
        let allow = Allow {
            edits: Default::default(),
            rate_limit: None,
            fleet: None,
        };
        let parsed: Value =
            serde_json::from_str(&record(&decision(Ok(allow), Some("key_1")))).unwrap();
        assert_eq!(
            parsed,
            json!({"key_id": "key_1", "tenant": "ac\"me", "scope": "leads:read", "decision": "allowed", "rate_limited": false})
        );
    }

    #[test]
    fn a_rate_limited_request_is_flagged() {
        let parsed: Value = serde_json::from_str(&record(&decision(
            Err(Denial::new(ErrorCode::RateLimited)),
            Some("k"),
        )))
        .unwrap();
        assert_eq!(
            (
                parsed["decision"].as_str(),
                parsed["rate_limited"].as_bool()
            ),
            (Some("rate_limited"), Some(true))
        );
    }

    #[test]
    fn a_denial_before_the_key_is_known_has_null_identity() {
        let parsed: Value = serde_json::from_str(&record(&decision(
            Err(Denial::new(ErrorCode::InvalidKey)),
            None,
        )))
        .unwrap();
        assert_eq!(
            (parsed["key_id"].clone(), parsed["decision"].clone()),
            (Value::Null, json!("invalid_key"))
        );
        let parsed: Value = serde_json::from_str(&not_configured()).unwrap();
        assert_eq!(parsed["decision"], "not_configured");
    }
}
