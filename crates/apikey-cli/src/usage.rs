//! `apikey usage`: per-key activity read back from Envoy's access log.
//!
//! Every shipped Envoy configuration writes a JSON access log whose
//! `apikey` field is the filter's audit record (a JSON object, as a
//! string: key id, tenant, scope, decision, rate-limited flag). This module
//! folds such a log into what the products in the seeds show per key:
//! requests, denials by code and "Last Used". Lines that are not access
//! log records are counted and skipped, never fatal: a log is shared with
//! whatever else Envoy writes.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;

/// One key's activity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    /// The key's id.
    pub key_id: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Requests that presented it.
    pub requests: u64,
    /// Of those, forwarded upstream.
    pub allowed: u64,
    /// Denials, by `error.code`.
    pub denied: BTreeMap<String, u64>,
    /// The latest request's `time` (as Envoy wrote it).
    pub last_used: Option<String>,
}

/// The whole log's activity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per key, by id.
    pub keys: Vec<KeyUsage>,
    /// Denials that named no key (missing, malformed, invalid, …), by code.
    pub unattributed: BTreeMap<String, u64>,
    /// Lines that were not access-log records with an audit field.
    pub skipped_lines: u64,
}

/// Reads an access log.
pub fn summarise(log: impl BufRead) -> std::io::Result<Report> {
    let mut keys: BTreeMap<String, KeyUsage> = BTreeMap::new();
    let mut report = Report::default();
    for line in log.lines() {
        let line = line?;
        let Some((record, time)) = audit_record(&line) else {
            report.skipped_lines += 1;
            continue;
        };
        let decision = record
            .get("decision")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let Some(key_id) = record.get("key_id").and_then(Value::as_str) else {
            if decision != "allowed" {
                *report.unattributed.entry(decision).or_default() += 1;
            }
            continue;
        };
        let usage = keys.entry(key_id.to_owned()).or_insert_with(|| KeyUsage {
            key_id: key_id.to_owned(),
            ..KeyUsage::default()
        });
        usage.requests += 1;
        if let Some(tenant) = record.get("tenant").and_then(Value::as_str) {
            usage.tenant = Some(tenant.to_owned());
        }
        if decision == "allowed" {
            usage.allowed += 1;
        } else {
            *usage.denied.entry(decision).or_default() += 1;
        }
        // RFC 3339 times in one zone sort as strings.
        if time.is_some() && usage.last_used.as_deref() < time.as_deref() {
            usage.last_used = time;
        }
    }
    report.keys = keys.into_values().collect();
    Ok(report)
}

/// The audit record and time of one access-log line, when it is one.
fn audit_record(line: &str) -> Option<(serde_json::Map<String, Value>, Option<String>)> {
    let entry: Value = serde_json::from_str(line).ok()?;
    let record = match entry.get("apikey")? {
        Value::String(text) => serde_json::from_str::<Value>(text).ok()?,
        Value::Object(object) => Value::Object(object.clone()),
        _ => return None,
    };
    let Value::Object(record) = record else {
        return None;
    };
    let time = entry.get("time").and_then(Value::as_str).map(str::to_owned);
    Some((record, time))
}

/// The human table of a report.
pub fn table(report: &Report) -> String {
    let mut rows = vec![[
        "KEY ID",
        "TENANT",
        "REQUESTS",
        "ALLOWED",
        "DENIED",
        "LAST USED",
    ]
    .map(str::to_owned)
    .to_vec()];
    for key in &report.keys {
        let denied = if key.denied.is_empty() {
            "-".to_owned()
        } else {
            key.denied
                .iter()
                .map(|(code, n)| format!("{code}={n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push(vec![
            key.key_id.clone(),
            key.tenant.clone().unwrap_or_else(|| "-".to_owned()),
            key.requests.to_string(),
            key.allowed.to_string(),
            denied,
            key.last_used.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = vec![0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    if !report.unattributed.is_empty() {
        let codes: Vec<String> = report
            .unattributed
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect();
        text.push_str(&format!("\nno key identified: {}\n", codes.join(",")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, record: &str) -> String {
        serde_json::json!({"time": time, "status": 200, "apikey": record}).to_string()
    }

    #[test]
    fn requests_denials_and_last_used_are_counted_per_key() {
        let log = [
            line("2026-11-25T10:00:00.000Z", r#"{"key_id":"k1","tenant":"acme","scope":"a","decision":"allowed","rate_limited":false}"#),
            line("2026-11-25T10:00:02.000Z", r#"{"key_id":"k1","tenant":"acme","scope":"b","decision":"insufficient_scope","rate_limited":false}"#),
            line("2026-11-25T10:00:01.000Z", r#"{"key_id":"k1","tenant":"acme","scope":"a","decision":"rate_limited","rate_limited":true}"#),
            line("2026-11-25T10:00:03.000Z", r#"{"key_id":"k2","tenant":"globex","scope":null,"decision":"key_revoked","rate_limited":false}"#),
            line("2026-11-25T10:00:04.000Z", r#"{"key_id":null,"tenant":null,"scope":"a","decision":"invalid_key","rate_limited":false}"#),
            "not json".to_owned(),
            serde_json::json!({"time": "x", "apikey": null}).to_string(),
        ]
        .join("\n");
        let report = summarise(log.as_bytes()).unwrap();
        assert_eq!(report.keys.len(), 2);
        let k1 = &report.keys[0];
        assert_eq!((k1.requests, k1.allowed), (3, 1));
        assert_eq!(k1.denied.get("insufficient_scope"), Some(&1));
        assert_eq!(k1.denied.get("rate_limited"), Some(&1));
        assert_eq!(k1.last_used.as_deref(), Some("2026-11-25T10:00:02.000Z"));
        assert_eq!(report.keys[1].denied.get("key_revoked"), Some(&1));
        assert_eq!(report.unattributed.get("invalid_key"), Some(&1));
        assert_eq!(report.skipped_lines, 2);
        assert!(table(&report).contains("insufficient_scope=1,rate_limited=1"));
    }

    #[test]
    fn an_empty_log_is_an_empty_report() {
        assert_eq!(summarise(&b""[..]).unwrap(), Report::default());
    }
}
