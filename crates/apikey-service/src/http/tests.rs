//! The usage routes through the whole router (guard, handlers, database),
//! driven without a socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, App, Limits};
use crate::auth::Tokens;
use crate::feed::{self, Feed};
use crate::metrics::Metrics;
use crate::pool::Pool;
use apikey_core::timestamp::format_rfc3339;

const ADMIN: &str = "admin-token-0123456789";
const FEED: &str = "feed-token-0123456789";

struct Service {
    app: Arc<App>,
}

#[derive(Clone, Copy)]
enum Token {
    Admin,
    Feed,
    None,
}

impl Service {
    fn new(name: &str, limits: Limits) -> Self {
        let dir = std::env::temp_dir().join(format!("apikey-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let app = Arc::new(App {
            pool: Arc::new(Pool::open(&dir.join("keys.db")).unwrap()),
            feed: Arc::new(Feed::new()),
            tokens: Tokens::new(ADMIN, FEED).unwrap(),
            metrics: Metrics::new(),
            limits,
            spool_dir: dir,
            access_log: false,
        });
        Self { app }
    }

    async fn call(&self, method: &str, path: &str, token: Token, body: &str) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(path);
        match token {
            Token::Admin => request = request.header("authorization", format!("Bearer {ADMIN}")),
            Token::Feed => request = request.header("authorization", format!("Bearer {FEED}")),
            Token::None => {}
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let response = router(Arc::clone(&self.app))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn create(&self) -> String {
        let (status, body) = self
            .call("POST", "/v1/keys", Token::Admin, r#"{"tenant":"acme"}"#)
            .await;
        assert_eq!(status, 201, "create: {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn report(&self, token: Token, lines: &[Value]) -> (u16, Value) {
        let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.call("POST", "/v1/feed/usage", token, &body).await
    }
}

fn line(id: &str, count: u64, at: &str) -> Value {
    json!({"id": id, "count": count, "last_used_at": at})
}

/// The service's clock `seconds` ago, as a report spells it (times ahead
/// of the service's clock are taken as its clock).
fn ago(seconds: i64) -> String {
    format_rfc3339(crate::now() - seconds * 1_000_000_000)
}

fn day(time: &str) -> &str {
    &time[..10]
}

#[tokio::test]
async fn a_usage_report_takes_the_feed_token_and_nothing_else() {
    let service = Service::new("usage-auth", Limits::default());
    let id = service.create().await;
    let at = ago(60);
    let report = [line(&id, 2, &at)];
    for (token, what) in [(Token::Admin, "the admin token"), (Token::None, "no token")] {
        let (status, body) = service.report(token, &report).await;
        assert_eq!(status, 401, "a report with {what} was taken: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
    let (status, body) = service.report(Token::Feed, &report).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"accepted": 1, "unknown": 0})),
        "the feed token's report: {body}"
    );
    // Only the one accepted report was stored.
    let (_, usage) = service
        .call("GET", &format!("/v1/keys/{id}/usage"), Token::Admin, "")
        .await;
    assert_eq!(usage["days"], json!([{"day": day(&at), "count": 2}]));
}

#[tokio::test]
async fn the_usage_of_a_key_is_the_admins_to_read() {
    let service = Service::new("usage-read", Limits::default());
    let id = service.create().await;
    let path = format!("/v1/keys/{id}/usage");
    let (status, body) = service.call("GET", &path, Token::Feed, "").await;
    assert_eq!(status, 401, "the feed token read a key's usage: {body}");
    let (status, body) = service.call("GET", &path, Token::Admin, "").await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"id": id, "days": []})),
        "a key never used: {body}"
    );
    let (status, body) = service
        .call("GET", "/v1/keys/key_nowhere/usage", Token::Admin, "")
        .await;
    assert_eq!(status, 404, "an unknown key's usage: {body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn reported_use_shows_in_the_record_the_list_the_days_and_the_metrics() {
    let service = Service::new("usage-shown", Limits::default());
    let used = service.create().await;
    let idle = service.create().await;
    let (yesterday, recent) = (ago(26 * 3600), ago(3600));
    let (status, body) = service
        .report(
            Token::Feed,
            &[
                line(&used, 3, &yesterday),
                line("key_of_another_database", 5, &recent),
                line(&used, 4, &recent),
            ],
        )
        .await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"accepted": 2, "unknown": 1}))
    );
    let (_, record) = service
        .call("GET", &format!("/v1/keys/{used}"), Token::Admin, "")
        .await;
    assert_eq!(record["last_used_at"], json!(recent), "{record}");
    let (_, record) = service
        .call("GET", &format!("/v1/keys/{idle}"), Token::Admin, "")
        .await;
    assert_eq!(record["last_used_at"], Value::Null, "{record}");
    let (_, page) = service.call("GET", "/v1/keys", Token::Admin, "").await;
    let listed: Vec<(String, Value)> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["last_used_at"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(idle.clone(), Value::Null), (used.clone(), json!(recent))],
        "the list's last_used_at"
    );
    let (_, usage) = service
        .call("GET", &format!("/v1/keys/{used}/usage"), Token::Admin, "")
        .await;
    assert_eq!(
        usage,
        json!({"id": used, "days": [{"day": day(&yesterday), "count": 3},
                                    {"day": day(&recent), "count": 4}]})
    );
    let (_, metrics) = service.call("GET", "/metrics", Token::None, "").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for expected in [
        "apikey_service_usage_reports_total 1",
        r#"apikey_service_usage_lines_total{outcome="accepted"} 2"#,
        r#"apikey_service_usage_lines_total{outcome="unknown"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_bad_report_is_refused_whole_naming_its_line_and_field() {
    let service = Service::new("usage-bad", Limits::default());
    let id = service.create().await;
    let body = format!(
        "{}\n{}\n",
        line(&id, 1, &ago(60)),
        json!({"id": id, "count": 0, "last_used_at": ago(60)})
    );
    let (status, answer) = service
        .call("POST", "/v1/feed/usage", Token::Feed, &body)
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        (
            &answer["error"]["code"],
            &answer["error"]["line"],
            &answer["error"]["field"]
        ),
        (&json!("invalid_request"), &json!(2), &json!("count")),
        "{answer}"
    );
    let (_, usage) = service
        .call("GET", &format!("/v1/keys/{id}/usage"), Token::Admin, "")
        .await;
    assert_eq!(
        usage["days"],
        json!([]),
        "part of a refused report was kept"
    );
}

#[tokio::test]
async fn a_report_over_the_body_limit_is_413() {
    let limits = Limits {
        body_bytes: 256,
        ..Limits::default()
    };
    let service = Service::new("usage-limit", limits);
    let lines: Vec<Value> = (0..10)
        .map(|n| line(&format!("key_{n}"), 1, "2026-12-05T09:00:00Z"))
        .collect();
    let (status, body) = service.report(Token::Feed, &lines).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn a_usage_report_wakes_no_long_poll() {
    let service = Service::new("usage-poll", Limits::default());
    let id = service.create().await;
    tokio::spawn(feed::follow(
        Arc::clone(&service.app.feed),
        Arc::clone(&service.app.pool),
    ));
    let (status, snapshot) = service
        .call("GET", "/v1/feed/snapshot", Token::Feed, "")
        .await;
    assert_eq!(status, 200);
    let text = snapshot.as_str().unwrap_or_default().to_owned();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let (generation, epoch) = (header["generation"].clone(), header["epoch"].clone());
    let poll = format!(
        "/v1/feed/changes?since={generation}&epoch={}&wait=2",
        epoch.as_str().unwrap()
    );
    let report = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        service.report(Token::Feed, &[line(&id, 1, &ago(60))]).await
    };
    let ((status, changes), (reported, _)) =
        tokio::join!(service.call("GET", &poll, Token::Feed, ""), report);
    assert_eq!((status, reported), (200, 200));
    let text = changes.as_str().unwrap_or_default().to_owned();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (&header["generation"], &header["keys"]),
        (&generation, &json!(0)),
        "the long poll saw a change after a usage report: {text}"
    );
}
