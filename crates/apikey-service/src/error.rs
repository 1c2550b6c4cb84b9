//! The service's one error type: what went wrong, in the terms of the
//! contract's §8.1 error list, so the HTTP layer and the CLI's `--db` mode
//! report the same refusal the same way.
//!
//! Each [`ApiError`] carries a [`Kind`] (which decides the HTTP status and
//! the `error.code` of the §3 body), a message for people, and, for a
//! refused field, the field's name, so a client can point at what to fix.
//! Messages never hold a raw key or a token: keys are only ever made
//! inside [`crate::keys`] and shown once in a create or rotate answer.

use core::fmt;

use serde_json::{json, Map, Value};

/// The kinds of refusal of contract §8.1 (and the two failures of the
/// service itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400 `invalid_request`: malformed JSON or NDJSON, an unknown field, a
    /// field given twice, a value the §1 validator refuses.
    InvalidRequest,
    /// 401 `unauthorized`: no admin token, or the wrong one.
    Unauthorized,
    /// 404 `not_found`: no key with that id, or no such route.
    NotFound,
    /// 405 `method_not_allowed`: the route exists, the method does not.
    MethodNotAllowed,
    /// 409 `conflict`: a duplicate `id` or `sha256`, a key already rotated,
    /// revoked or expired where an active one is needed, settings that
    /// stored keys would not satisfy.
    Conflict,
    /// 410 `snapshot_required`: the feed cannot bring a gateway forward
    /// from the generation it names (another database, or more changes
    /// than one answer holds); it takes a new snapshot.
    SnapshotRequired,
    /// 413 `payload_too_large`: a body over the limit.
    PayloadTooLarge,
    /// 422 `key_limit_reached`: the tenant's `max_keys_per_tenant`.
    KeyLimitReached,
    /// 500 `internal_error`: the database failed.
    Internal,
    /// 503 `unavailable`: the database stayed locked past the busy timeout.
    Unavailable,
}

impl Kind {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::SnapshotRequired => 410,
            Self::PayloadTooLarge => 413,
            Self::KeyLimitReached => 422,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The kind an `error.code` names (a client reading a refusal).
    pub fn from_code(code: &str) -> Option<Self> {
        [
            Self::InvalidRequest,
            Self::Unauthorized,
            Self::NotFound,
            Self::MethodNotAllowed,
            Self::Conflict,
            Self::SnapshotRequired,
            Self::PayloadTooLarge,
            Self::KeyLimitReached,
            Self::Internal,
            Self::Unavailable,
        ]
        .into_iter()
        .find(|kind| kind.code() == code)
    }

    /// The `error.code` of the body.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::SnapshotRequired => "snapshot_required",
            Self::PayloadTooLarge => "payload_too_large",
            Self::KeyLimitReached => "key_limit_reached",
            Self::Internal => "internal_error",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// What kind of refusal.
    pub kind: Kind,
    /// For people: what was wrong and, where it helps, what to do.
    pub message: String,
    /// Extra fields of the body (`field`, `line`, `tenant`, `limit`, ...).
    pub details: Map<String, Value>,
}

impl ApiError {
    /// A refusal without details.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// A 400 about one field (`field` is empty for the body as a whole).
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        if field.is_empty() {
            return Self::new(Kind::InvalidRequest, message);
        }
        Self::new(Kind::InvalidRequest, format!("{field}: {message}")).with("field", json!(field))
    }

    /// A 404 for a key id.
    pub fn no_key(id: &str) -> Self {
        Self::new(Kind::NotFound, format!("no key with id {id:?}")).with("id", json!(id))
    }

    /// Adds a detail field to the body.
    #[must_use]
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.details.insert(name.to_owned(), value);
        self
    }

    /// The §3 body: `{"error": {"code", "message", ...details}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".to_owned(), json!(self.kind.code()));
        error.insert("message".to_owned(), json!(self.message));
        for (name, value) in &self.details {
            error.insert(name.clone(), value.clone());
        }
        json!({ "error": error })
    }

    /// The field the refusal names, if any.
    pub fn field(&self) -> Option<&str> {
        self.details.get("field").and_then(Value::as_str)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<rusqlite::Error> for ApiError {
    /// A database failure. A lock held past the busy timeout is 503 (try
    /// again); anything else is 500, with SQLite's message (which names
    /// tables and constraints, never values).
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Self::new(
                    Kind::Unavailable,
                    "the database is busy (another writer held it past the busy timeout); try again",
                )
            }
            _ => Self::new(Kind::Internal, format!("database error: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_refusal_names_the_field_in_the_message_and_the_body() {
        let error = ApiError::invalid("scopes[1]", "must be a string");
        assert_eq!(error.kind.status(), 400);
        assert_eq!(
            error.body(),
            json!({"error": {"code": "invalid_request", "message": "scopes[1]: must be a string",
                             "field": "scopes[1]"}})
        );
    }

    #[test]
    fn a_code_read_back_names_its_kind() {
        for kind in [
            Kind::InvalidRequest,
            Kind::Conflict,
            Kind::KeyLimitReached,
            Kind::Unavailable,
        ] {
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(Kind::from_code("key_revoked"), None);
    }

    #[test]
    fn every_kind_has_the_status_and_code_of_contract_8_1() {
        let expected = [
            (Kind::InvalidRequest, 400, "invalid_request"),
            (Kind::Unauthorized, 401, "unauthorized"),
            (Kind::NotFound, 404, "not_found"),
            (Kind::Conflict, 409, "conflict"),
            (Kind::PayloadTooLarge, 413, "payload_too_large"),
            (Kind::KeyLimitReached, 422, "key_limit_reached"),
        ];
        for (kind, status, code) in expected {
            assert_eq!((kind.status(), kind.code()), (status, code), "{kind:?}");
        }
    }
}
