//! The two places the key service's data can be reached: the database
//! itself (`--db`: the service's own operations, called in this process)
//! and a running service (`--server`: its HTTP API). Both answer with the
//! API's JSON bodies and refusals, so every command prints the same thing
//! whichever way it went, and a script sees the same error codes.

use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use apikey_core::timestamp::UnixNanos;
use apikey_service::error::{ApiError, Kind};
use apikey_service::keygen::OsRandom;
use apikey_service::keys::{self, ListQuery};
use apikey_service::{db, import, settings::Settings, settings_store, usage};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::error::{refused_as, CliError, Code};

/// The management operations of contract §8.2, answered as the API
/// answers them.
pub trait Backend {
    /// `POST /v1/keys`: the 201 body (with the raw key).
    fn create(&mut self, fields: Map<String, Value>) -> Result<Value, CliError>;
    /// `GET /v1/keys`: one page, `{"keys", "next_cursor"}`.
    fn list(&mut self, query: &ListQuery) -> Result<Value, CliError>;
    /// `GET /v1/keys/{id}`.
    fn get(&mut self, id: &str) -> Result<Value, CliError>;
    /// `GET /v1/keys/{id}/usage`: `{"id", "days": [{"day", "count"}]}`.
    fn usage(&mut self, id: &str) -> Result<Value, CliError>;
    /// `POST /v1/keys/{id}/revoke`.
    fn revoke(&mut self, id: &str) -> Result<Value, CliError>;
    /// `POST /v1/keys/{id}/rotate`: the 201 body (with the raw key).
    fn rotate(&mut self, id: &str, options: Map<String, Value>) -> Result<Value, CliError>;
    /// `GET /v1/settings`.
    fn settings(&mut self) -> Result<Value, CliError>;
    /// `PUT /v1/settings`.
    fn put_settings(&mut self, body: &[u8]) -> Result<Value, CliError>;
    /// `POST /v1/keys/import`: `{"imported": N}`.
    fn import(&mut self, source: Box<dyn Read + Send>) -> Result<Value, CliError>;
}

/// The database, through the service's own operations.
pub struct Database {
    /// The open database.
    pub connection: Connection,
    now: UnixNanos,
}

impl Database {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path, now: UnixNanos) -> Result<Self, CliError> {
        Ok(Self {
            connection: db::open(path)?,
            now,
        })
    }

    /// The whole §1 configuration the database describes.
    pub fn config_document(&self) -> Result<Vec<u8>, CliError> {
        Ok(settings_store::config_document(&self.connection)?)
    }
}

impl Backend for Database {
    fn create(&mut self, fields: Map<String, Value>) -> Result<Value, CliError> {
        let created = keys::create(&mut self.connection, fields, self.now, &mut OsRandom)?;
        Ok(created.body(self.now))
    }

    fn list(&mut self, query: &ListQuery) -> Result<Value, CliError> {
        Ok(keys::list(&self.connection, query)?.body(self.now))
    }

    fn get(&mut self, id: &str) -> Result<Value, CliError> {
        let record = keys::get(&self.connection, id)?;
        Ok(Value::Object(record.public(self.now)))
    }

    fn usage(&mut self, id: &str) -> Result<Value, CliError> {
        let days = usage::by_day(&self.connection, id)?;
        Ok(usage::days_body(id, &days))
    }

    fn revoke(&mut self, id: &str) -> Result<Value, CliError> {
        let record = keys::revoke(&mut self.connection, id, self.now)?;
        Ok(Value::Object(record.public(self.now)))
    }

    fn rotate(&mut self, id: &str, options: Map<String, Value>) -> Result<Value, CliError> {
        let created = keys::rotate(&mut self.connection, id, &options, self.now, &mut OsRandom)?;
        Ok(created.body(self.now))
    }

    fn settings(&mut self) -> Result<Value, CliError> {
        let settings = settings_store::load(&self.connection)?;
        Ok(Value::Object(settings.document().clone()))
    }

    fn put_settings(&mut self, body: &[u8]) -> Result<Value, CliError> {
        let settings = Settings::from_body(body)?;
        settings_store::put(&mut self.connection, &settings, self.now)?;
        Ok(Value::Object(settings.document().clone()))
    }

    fn import(&mut self, source: Box<dyn Read + Send>) -> Result<Value, CliError> {
        let mut reader = BufReader::with_capacity(1 << 20, source);
        let imported = import::import(&mut self.connection, &mut reader, self.now)?;
        Ok(json!({ "imported": imported }))
    }
}

/// A running service, through its HTTP API.
pub struct Server {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl Server {
    /// A client of the service at `url` (`http://host:port`), presenting
    /// `token`.
    pub fn new(url: &str, token: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build();
        Self {
            agent: config.into(),
            base: url.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {token}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; a 2xx answer's JSON, or the refusal it carries.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, ureq::SendBody<'_>)>,
    ) -> Result<Value, CliError> {
        let url = self.url(path);
        let unreachable = |error: ureq::Error| {
            refused_as(
                Code::IoError,
                format!("cannot reach the key service at {}: {error}", self.base),
            )
        };
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.authorization);
        let response = match body {
            Some((content_type, body)) => {
                let request = request
                    .header("content-type", content_type)
                    .body(body)
                    .map_err(|error| refused_as(Code::IoError, format!("{url}: {error}")))?;
                self.agent.run(request)
            }
            None => {
                let request = request
                    .body(())
                    .map_err(|error| refused_as(Code::IoError, format!("{url}: {error}")))?;
                self.agent.run(request)
            }
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(unreachable)?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if (200..300).contains(&status) {
            return value.ok_or_else(|| {
                refused_as(
                    Code::IoError,
                    format!("{method} {url}: {status} with a body that is not JSON"),
                )
            });
        }
        let refusal = value.as_ref().and_then(|value| {
            let error = value.get("error")?;
            let kind = Kind::from_code(error.get("code")?.as_str()?)?;
            let message = error.get("message")?.as_str()?.to_owned();
            Some(ApiError::new(kind, message))
        });
        Err(match refusal {
            Some(refusal) => CliError::from(refusal),
            None => refused_as(
                Code::IoError,
                format!("{method} {url}: {status} without a key-service error body"),
            ),
        })
    }

    fn json_body(value: &Value) -> ureq::SendBody<'static> {
        ureq::SendBody::from_owned_reader(std::io::Cursor::new(value.to_string().into_bytes()))
    }
}

/// A path segment with everything but unreserved characters escaped.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Backend for Server {
    fn create(&mut self, fields: Map<String, Value>) -> Result<Value, CliError> {
        let body = Self::json_body(&Value::Object(fields));
        self.call("POST", "/v1/keys", Some(("application/json", body)))
    }

    fn list(&mut self, query: &ListQuery) -> Result<Value, CliError> {
        let mut params = form_urlencoded::Serializer::new(String::new());
        params.append_pair("limit", &query.limit.to_string());
        if let Some(tenant) = &query.tenant {
            params.append_pair("tenant", tenant);
        }
        if let Some(cursor) = query.cursor {
            params.append_pair("cursor", &keys::cursor_after(cursor));
        }
        self.call("GET", &format!("/v1/keys?{}", params.finish()), None)
    }

    fn get(&mut self, id: &str) -> Result<Value, CliError> {
        self.call("GET", &format!("/v1/keys/{}", segment(id)), None)
    }

    fn usage(&mut self, id: &str) -> Result<Value, CliError> {
        self.call("GET", &format!("/v1/keys/{}/usage", segment(id)), None)
    }

    fn revoke(&mut self, id: &str) -> Result<Value, CliError> {
        let path = format!("/v1/keys/{}/revoke", segment(id));
        self.call(
            "POST",
            &path,
            Some(("application/json", Self::json_body(&json!({})))),
        )
    }

    fn rotate(&mut self, id: &str, options: Map<String, Value>) -> Result<Value, CliError> {
        let path = format!("/v1/keys/{}/rotate", segment(id));
        let body = Self::json_body(&Value::Object(options));
        self.call("POST", &path, Some(("application/json", body)))
    }

    fn settings(&mut self) -> Result<Value, CliError> {
        self.call("GET", "/v1/settings", None)
    }

    fn put_settings(&mut self, body: &[u8]) -> Result<Value, CliError> {
        let body = ureq::SendBody::from_owned_reader(std::io::Cursor::new(body.to_vec()));
        self.call("PUT", "/v1/settings", Some(("application/json", body)))
    }

    fn import(&mut self, source: Box<dyn Read + Send>) -> Result<Value, CliError> {
        let body = ureq::SendBody::from_owned_reader(source);
        self.call(
            "POST",
            "/v1/keys/import",
            Some(("application/x-ndjson", body)),
        )
    }
}
