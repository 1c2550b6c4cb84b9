//! The management API's routes (contract §8.2), the gateways' feed
//! (§8.3, [`crate::feed`]) and usage reports (§8.4, [`crate::usage`]), the
//! health and metrics endpoints, and the guard every request passes: the
//! feed token for `/v1/feed/...` (usage reports included) and the admin
//! token for every other `/v1/...` (neither opens the other's routes), a
//! size limit on every body, a JSON body in the §3 shape for
//! every refusal, a metric and one log line per request.
//!
//! `/healthz` and `/metrics` need no token, on the same port: the health
//! check is for load balancers and orchestrators that hold no secret, and
//! the metrics hold only counts and latencies by route template and status
//! (no key id, tenant or token), so a Prometheus scrape needs no admin
//! token either, and the admin token never has to sit in a scraper's
//! configuration. Bind `--listen` to an address only the operators' network
//! reaches.

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::auth::{Caller, Tokens};
use crate::error::{ApiError, Kind};
use crate::feed::{self, ChangesQuery, Feed, SnapshotQuery};
use crate::keygen::OsRandom;
use crate::keys::{self, ListQuery};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::settings::Settings;
use crate::{import, now, settings_store, strict_json, usage};

/// Body size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Every JSON body (settings, create, revoke, rotate).
    pub body_bytes: usize,
    /// An NDJSON import.
    pub import_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            import_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The database.
    pub pool: Arc<Pool>,
    /// The gateways' feed: its running digest and published generation.
    pub feed: Arc<Feed>,
    /// The admin and feed tokens' digests.
    pub tokens: Tokens,
    /// The API's metrics.
    pub metrics: Metrics,
    /// Body limits.
    pub limits: Limits,
    /// Where an import's body is spooled before it is read (the database's
    /// directory: the same disk, and no size limit of a tmpfs).
    pub spool_dir: PathBuf,
    /// Whether to write one line per request on stderr.
    pub access_log: bool,
}

/// The router of the whole service.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/settings", get(get_settings).put(put_settings))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/import", post(import_keys))
        .route("/v1/keys/{id}", get(get_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/keys/{id}/usage", get(key_usage))
        .route("/v1/feed/snapshot", get(feed_snapshot))
        .route("/v1/feed/changes", get(feed_changes))
        .route("/v1/feed/usage", post(feed_usage))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// The guard around every request: the admin token on `/v1/...`, then the
/// route, then the metric and the log line. Tokens are never logged; the
/// log names the route template, not the path.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let path = request.uri().path();
    let feed_route = path == "/v1/feed" || path.starts_with("/v1/feed/");
    let management = path == "/v1" || path.starts_with("/v1/");
    let response = if feed_route {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match app.tokens.identify(authorization) {
            Caller::Feed => next.run(request).await,
            Caller::Admin => {
                feed_refusal("the admin token manages keys; the feed takes the feed token")
            }
            Caller::Unknown => feed_refusal(
                "missing or wrong feed token (send Authorization: Bearer <feed token>)",
            ),
        }
    } else if management {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match app.tokens.identify(authorization) {
            Caller::Admin => next.run(request).await,
            Caller::Feed => error(&ApiError::new(
                Kind::Unauthorized,
                "the feed token is for gateways; managing keys takes the admin token",
            )),
            Caller::Unknown => error(&ApiError::new(
                Kind::Unauthorized,
                "missing or wrong admin token (send Authorization: Bearer <admin token>)",
            )),
        }
    } else {
        next.run(request).await
    };
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    app.metrics.observe(&route, &method, status, seconds);
    if app.access_log {
        eprintln!(
            "apikey serve: {method} {route} {status} {:.1}ms",
            seconds * 1000.0
        );
    }
    response
}

/// A JSON answer; `no-store`, since some hold a key shown once.
fn json_response(status: u16, value: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal in the §3 shape; a 401 also carries the challenge.
fn error(error: &ApiError) -> Response {
    let mut response = json_response(error.kind.status(), &error.body());
    if error.kind == Kind::Unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"apikey-admin\""),
        );
    }
    response
}

/// A 401 on the feed: the §3 shape, with the feed's realm.
fn feed_refusal(message: &str) -> Response {
    let refusal = ApiError::new(Kind::Unauthorized, message);
    let mut response = json_response(refusal.kind.status(), &refusal.body());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"apikey-feed\""),
    );
    response
}

fn respond(result: Result<(u16, Value), ApiError>) -> Response {
    match result {
        Ok((status, value)) => json_response(status, &value),
        Err(refusal) => error(&refusal),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        Kind::PayloadTooLarge,
        format!("the body is larger than the limit of {limit} bytes"),
    )
    .with("limit", json!(limit))
}

/// Reads a whole body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(failure) if failure.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(u64::try_from(limit).unwrap_or(u64::MAX)))
        }
        Err(failure) => Err(ApiError::invalid(
            "",
            format!("cannot read the body: {failure}"),
        )),
    }
}

/// A body that may be empty (no options) or a JSON object.
fn optional_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.trim_ascii().is_empty() {
        Ok(Map::new())
    } else {
        strict_json::parse_object(bytes)
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let checked = app
        .pool
        .read(|connection| Ok(connection.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?))
        .await;
    match checked {
        Ok(_) => json_response(200, &json!({"status": "ok"})),
        Err(failure) => error(&ApiError::new(
            Kind::Unavailable,
            format!("the database does not answer: {failure}"),
        )),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => error(&ApiError::new(Kind::Internal, "cannot encode the metrics")),
    }
}

async fn not_found() -> Response {
    error(&ApiError::new(Kind::NotFound, "no such route"))
}

async fn method_not_allowed() -> Response {
    error(&ApiError::new(
        Kind::MethodNotAllowed,
        "this route does not take this method",
    ))
}

async fn get_settings(State(app): State<Arc<App>>) -> Response {
    let result = app
        .pool
        .read(settings_store::load)
        .await
        .map(|settings| (200, Value::Object(settings.document().clone())));
    respond(result)
}

async fn put_settings(State(app): State<Arc<App>>, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, app.limits.body_bytes).await?;
        let settings = Settings::from_body(&bytes)?;
        let document = Value::Object(settings.document().clone());
        let now = now();
        app.pool
            .write(move |connection| settings_store::put(connection, &settings, now))
            .await?;
        app.feed.changed();
        Ok((200, document))
    }
    .await;
    respond(result)
}

async fn create_key(State(app): State<Arc<App>>, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, app.limits.body_bytes).await?;
        let fields = strict_json::parse_object(&bytes)?;
        let now = now();
        let created = app
            .pool
            .write(move |connection| keys::create(connection, fields, now, &mut OsRandom))
            .await?;
        app.feed.changed();
        Ok((201, created.body(now)))
    }
    .await;
    respond(result)
}

async fn import_keys(State(app): State<Arc<App>>, body: Body) -> Response {
    let result = async {
        let spooled = spool(body, app.limits.import_bytes, &app.spool_dir).await?;
        let now = now();
        let imported = app
            .pool
            .write(move |connection| {
                let mut reader = std::io::BufReader::with_capacity(1 << 20, spooled);
                import::import(connection, &mut reader, now)
            })
            .await?;
        app.feed.changed();
        Ok((200, json!({"imported": imported})))
    }
    .await;
    respond(result)
}

/// Writes an import's body to an unnamed temporary file (nothing is left
/// behind if the process dies), so a slow upload never holds the write
/// lock, and the body never sits whole in memory.
async fn spool(
    mut body: Body,
    limit: u64,
    dir: &std::path::Path,
) -> Result<std::fs::File, ApiError> {
    let internal = |what: &str, failure: std::io::Error| {
        ApiError::new(
            Kind::Internal,
            format!("cannot {what} the import's spool file: {failure}"),
        )
    };
    let file = tempfile::tempfile_in(dir).map_err(|failure| internal("create", failure))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|failure| ApiError::invalid("", format!("cannot read the body: {failure}")))?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
            if total > limit {
                return Err(too_large(limit));
            }
            file.write_all(&data)
                .await
                .map_err(|failure| internal("write", failure))?;
        }
    }
    file.flush()
        .await
        .map_err(|failure| internal("write", failure))?;
    let mut file = file.into_std().await;
    file.seek(SeekFrom::Start(0))
        .map_err(|failure| internal("rewind", failure))?;
    Ok(file)
}

async fn list_keys(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let result = async {
        let query = ListQuery::parse(uri.query())?;
        let page = app
            .pool
            .read(move |connection| keys::list(connection, &query))
            .await?;
        Ok((200, page.body(now())))
    }
    .await;
    respond(result)
}

async fn get_key(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let result = async {
        let record = app
            .pool
            .read(move |connection| keys::get(connection, &id))
            .await?;
        Ok((200, Value::Object(record.public(now()))))
    }
    .await;
    respond(result)
}

/// `GET /v1/keys/{id}/usage`: the key's requests by UTC day (§8.4).
async fn key_usage(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let result = async {
        let days = app
            .pool
            .read({
                let id = id.clone();
                move |connection| usage::by_day(connection, &id)
            })
            .await?;
        Ok((200, usage::days_body(&id, &days)))
    }
    .await;
    respond(result)
}

async fn revoke_key(State(app): State<Arc<App>>, Path(id): Path<String>, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, app.limits.body_bytes).await?;
        keys::check_fields(&optional_object(&bytes)?, &[])?;
        let now = now();
        let record = app
            .pool
            .write(move |connection| keys::revoke(connection, &id, now))
            .await?;
        app.feed.changed();
        Ok((200, Value::Object(record.public(now))))
    }
    .await;
    respond(result)
}

async fn rotate_key(State(app): State<Arc<App>>, Path(id): Path<String>, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, app.limits.body_bytes).await?;
        let options = optional_object(&bytes)?;
        let now = now();
        let created = app
            .pool
            .write(move |connection| keys::rotate(connection, &id, &options, now, &mut OsRandom))
            .await?;
        app.feed.changed();
        Ok((201, created.body(now)))
    }
    .await;
    respond(result)
}

/// A feed answer: NDJSON, never cached by a proxy, with its ETag.
fn feed_response(answer: &feed::Answer) -> Response {
    let mut response = (StatusCode::OK, answer.body()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(tag) = HeaderValue::from_str(&feed::etag(&answer.head)) {
        headers.insert(header::ETAG, tag);
    }
    response
}

async fn feed_snapshot(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let result = async {
        let query = SnapshotQuery::parse(uri.query())?;
        let feed = Arc::clone(&app.feed);
        app.pool
            .read(move |connection| feed::snapshot(&feed, connection, query))
            .await
    }
    .await;
    match result {
        Ok(answer) => feed_response(&answer),
        Err(refusal) => error(&refusal),
    }
}

/// `GET /v1/feed/changes?since=G&wait=S`: answers at once when something
/// changed after `G`; otherwise holds the request (on the published
/// generation, never on the database) until something does or `wait`
/// ends. Nothing changed: 304 when `If-None-Match` names the current
/// table, else an answer with no lines to apply.
async fn feed_changes(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let query = ChangesQuery::parse(uri.query())?;
        // Subscribed before the first read: a change committed between
        // the read and the wait is still seen.
        let mut published = app.feed.subscribe();
        let read = |query: ChangesQuery| {
            let feed = Arc::clone(&app.feed);
            app.pool
                .read(move |connection| feed::changes(&feed, connection, &query))
        };
        let mut answer = read(query.clone()).await?;
        if answer.is_empty() && !query.wait.is_zero() {
            let since = query.since;
            // The watch's guard is dropped here, before the next await.
            let moved = matches!(
                tokio::time::timeout(query.wait, published.wait_for(|&seen| seen > since)).await,
                Ok(Ok(_))
            );
            if moved {
                answer = read(query).await?;
            }
        }
        Ok::<_, ApiError>(answer)
    }
    .await;
    match result {
        Ok(answer) => {
            let tag = feed::etag(&answer.head);
            let unchanged = headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|given| given.as_bytes() == tag.as_bytes());
            if answer.is_empty() && unchanged {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(tag) = HeaderValue::from_str(&tag) {
                    response.headers_mut().insert(header::ETAG, tag);
                }
                response
            } else {
                feed_response(&answer)
            }
        }
        Err(refusal) => error(&refusal),
    }
}

/// `POST /v1/feed/usage`: a gateway's usage report (§8.4), NDJSON within
/// the JSON body limit, checked whole before one write stores it. It does
/// not touch the feed (no `changed()`): a report wakes no long poll.
async fn feed_usage(State(app): State<Arc<App>>, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, app.limits.body_bytes).await?;
        let uses = usage::parse(&bytes)?;
        let now = now();
        let recorded = app
            .pool
            .write(move |connection| usage::record(connection, &uses, now))
            .await?;
        app.metrics
            .usage_report(recorded.accepted, recorded.unknown);
        Ok((200, recorded.body()))
    }
    .await;
    respond(result)
}

#[cfg(test)]
mod tests;
