//! Denials as clients see them (contract §3): status, JSON body, headers.
//!
//! Every denial is `application/json` with one `error` object; 401s carry a
//! `WWW-Authenticate` challenge for each enabled scheme, 429s carry
//! `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers. A
//! body never contains the presented key: nothing here is given it.

use crate::credentials::{Scheme, Schemes};

/// Every error code of contract §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the path cannot be matched safely.
    InvalidPath,
    /// 401: no credential in an enabled scheme.
    MissingCredentials,
    /// 401: bad characters, too long, not one of `key_prefixes`.
    MalformedCredentials,
    /// 401: two different keys in one request.
    ConflictingCredentials,
    /// 401: no key with that hash.
    InvalidKey,
    /// 401: the key was revoked.
    KeyRevoked,
    /// 401: the key's `expires_at` has passed.
    KeyExpired,
    /// 403: the key does not hold the rule's scope.
    InsufficientScope,
    /// 403: the key holds it, its plan does not grant it.
    PlanUpgradeRequired,
    /// 429: the bucket is empty.
    RateLimited,
    /// 503: no valid configuration yet.
    NotConfigured,
    /// 503: the fleet's rate-limit service failed and `on_failure` is `deny`.
    RateLimiterUnavailable,
    /// 403: `require_https` and the request came over plain HTTP (§7.2).
    HttpsRequired,
    /// 404: a `{tenant}` rule segment names another tenant than the key's (§7.3).
    NotFound,
}

impl ErrorCode {
    /// Every code, for metrics.
    pub const ALL: [Self; 14] = [
        Self::InvalidPath,
        Self::MissingCredentials,
        Self::MalformedCredentials,
        Self::ConflictingCredentials,
        Self::InvalidKey,
        Self::KeyRevoked,
        Self::KeyExpired,
        Self::InsufficientScope,
        Self::PlanUpgradeRequired,
        Self::RateLimited,
        Self::NotConfigured,
        Self::RateLimiterUnavailable,
        Self::HttpsRequired,
        Self::NotFound,
    ];

    /// The `error.code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPath => "invalid_path",
            Self::MissingCredentials => "missing_credentials",
            Self::MalformedCredentials => "malformed_credentials",
            Self::ConflictingCredentials => "conflicting_credentials",
            Self::InvalidKey => "invalid_key",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::InsufficientScope => "insufficient_scope",
            Self::PlanUpgradeRequired => "plan_upgrade_required",
            Self::RateLimited => "rate_limited",
            Self::NotConfigured => "not_configured",
            Self::RateLimiterUnavailable => "rate_limiter_unavailable",
            Self::HttpsRequired => "https_required",
            Self::NotFound => "not_found",
        }
    }

    /// What Envoy's `%RESPONSE_CODE_DETAILS%` shows for this denial:
    /// `apikey_` and the code (a constant, so a denial formats nothing).
    pub fn response_details(self) -> &'static str {
        match self {
            Self::InvalidPath => "apikey_invalid_path",
            Self::MissingCredentials => "apikey_missing_credentials",
            Self::MalformedCredentials => "apikey_malformed_credentials",
            Self::ConflictingCredentials => "apikey_conflicting_credentials",
            Self::InvalidKey => "apikey_invalid_key",
            Self::KeyRevoked => "apikey_key_revoked",
            Self::KeyExpired => "apikey_key_expired",
            Self::InsufficientScope => "apikey_insufficient_scope",
            Self::PlanUpgradeRequired => "apikey_plan_upgrade_required",
            Self::RateLimited => "apikey_rate_limited",
            Self::NotConfigured => "apikey_not_configured",
            Self::RateLimiterUnavailable => "apikey_rate_limiter_unavailable",
            Self::HttpsRequired => "apikey_https_required",
            Self::NotFound => "apikey_not_found",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u32 {
        match self {
            Self::InvalidPath => 400,
            Self::MissingCredentials
            | Self::MalformedCredentials
            | Self::ConflictingCredentials
            | Self::InvalidKey
            | Self::KeyRevoked
            | Self::KeyExpired => 401,
            Self::InsufficientScope | Self::PlanUpgradeRequired | Self::HttpsRequired => 403,
            Self::NotFound => 404,
            Self::RateLimited => 429,
            Self::NotConfigured | Self::RateLimiterUnavailable => 503,
        }
    }
}

/// The state of the bucket a request counted against, for the `RateLimit`
/// headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitReport {
    /// The bucket's pattern (the policy name).
    pub pattern: String,
    /// `requests` of the limit.
    pub quota: u64,
    /// `period_seconds` of the limit.
    pub window_seconds: u64,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Seconds until the next whole token, at least 1.
    pub reset_seconds: u64,
}

impl RateLimitReport {
    /// `RateLimit-Policy` and `RateLimit` header values.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (
                "ratelimit-policy",
                format!(
                    "\"{}\";q={};w={}",
                    self.pattern, self.quota, self.window_seconds
                ),
            ),
            (
                "ratelimit",
                format!(
                    "\"{}\";r={};t={}",
                    self.pattern, self.remaining, self.reset_seconds
                ),
            ),
        ]
    }
}

/// Why a request was denied, with what the body and headers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The error.
    pub code: ErrorCode,
    /// The scope the request needed (403; `*` for a 429 without one).
    pub scope: Option<String>,
    /// The key's plan (403 `plan_upgrade_required`).
    pub plan: Option<String>,
    /// Whether a Bearer credential came with the request (403 challenge).
    pub via_bearer: bool,
    /// The bucket (429).
    pub rate_limit: Option<RateLimitReport>,
    /// Seconds to wait (429).
    pub retry_after: Option<u64>,
    /// A plain-HTTP request carried a credential, which crossed the network
    /// in clear (403 `https_required`).
    pub credential_exposed: bool,
}

impl Denial {
    /// A denial with no extra fields.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            scope: None,
            plan: None,
            via_bearer: false,
            rate_limit: None,
            retry_after: None,
            credential_exposed: false,
        }
    }
}

/// A local reply for Envoy to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u32,
    /// Response headers.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: String,
}

/// The `error_doc_url` template (§7.4), split at its `{code}` placeholder
/// at configure time so a denial only concatenates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocUrl {
    /// The text before `{code}` (all of it when there is no placeholder).
    pub before: String,
    /// The text after `{code}`, when the template holds one.
    pub after: Option<String>,
}

impl DocUrl {
    /// The placeholder an error code replaces.
    pub const PLACEHOLDER: &'static str = "{code}";

    /// The longest template accepted.
    pub const MAX_LEN: usize = 2048;

    /// Validates an `error_doc_url` template: an absolute `https://` URL
    /// of visible ASCII (URLs percent-encode everything else), with
    /// `{code}` at most once and no other brace (RFC 3986 has none). The
    /// reason is returned for the configuration's refusal.
    pub fn parse(template: &str) -> Result<Self, String> {
        let Some(rest) = template.strip_prefix("https://") else {
            return Err(format!("{template:?} is not an absolute https:// URL"));
        };
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if rest.get(..host_end).is_none_or(str::is_empty) {
            return Err(format!("{template:?} names no host"));
        }
        if template.len() > Self::MAX_LEN || !template.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            return Err(format!(
                "must be at most {} visible ASCII characters (percent-encode the rest)",
                Self::MAX_LEN
            ));
        }
        let doc_url = Self::new(template);
        let stray_brace = |text: &str| text.contains(['{', '}']);
        if stray_brace(&doc_url.before) || doc_url.after.as_deref().is_some_and(stray_brace) {
            return Err(format!(
                "{template:?} may hold {} at most once and no other brace",
                Self::PLACEHOLDER
            ));
        }
        Ok(doc_url)
    }

    /// Splits a validated template.
    pub fn new(template: &str) -> Self {
        match template.split_once(Self::PLACEHOLDER) {
            Some((before, after)) => Self {
                before: before.to_owned(),
                after: Some(after.to_owned()),
            },
            None => Self {
                before: template.to_owned(),
                after: None,
            },
        }
    }

    /// The link for `code`.
    pub fn for_code(&self, code: ErrorCode) -> String {
        match &self.after {
            Some(after) => [self.before.as_str(), code.as_str(), after].concat(),
            None => self.before.clone(),
        }
    }
}

/// Per-configuration text of denials, built once at configure time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenialText {
    realm: String,
    challenge_401: String,
    missing_message: String,
    doc_url: Option<DocUrl>,
}

impl Default for DenialText {
    /// The text before any configuration: every scheme, realm `api`.
    fn default() -> Self {
        Self::new(Schemes::ALL, "api")
    }
}

impl DenialText {
    /// Adds `doc_url` to every body this text renders (`error_doc_url`).
    pub fn with_doc_url(mut self, doc_url: Option<DocUrl>) -> Self {
        self.doc_url = doc_url;
        self
    }

    /// Precomputes the challenges and hints for the enabled `schemes`.
    pub fn new(schemes: Schemes, realm: &str) -> Self {
        let mut challenges = Vec::new();
        let mut hints = Vec::new();
        for scheme in Scheme::ALL.into_iter().filter(|s| schemes.contains(*s)) {
            match scheme {
                Scheme::Bearer => {
                    challenges.push(format!("Bearer realm=\"{realm}\""));
                    hints.push("Authorization: Bearer <key>");
                }
                Scheme::ApiKey => {
                    challenges.push(format!("ApiKey realm=\"{realm}\""));
                    hints.push("Authorization: ApiKey <key>");
                }
                Scheme::XApiKey => hints.push("X-API-Key: <key>"),
            }
        }
        // RFC 9110 requires at least one challenge on a 401.
        if challenges.is_empty() {
            challenges.push(format!("ApiKey realm=\"{realm}\", header=\"X-API-Key\""));
        }
        Self {
            realm: realm.to_owned(),
            challenge_401: challenges.join(", "),
            missing_message: format!(
                "This request needs an API key. Send it as {}.",
                hints.join(" or ")
            ),
            doc_url: None,
        }
    }

    /// Renders `denial` for the request whose `x-request-id` is `request_id`.
    pub fn render(&self, denial: &Denial, request_id: Option<&[u8]>) -> Reply {
        let code = denial.code;
        let scope = denial.scope.as_deref().unwrap_or("*");
        let message = match code {
            ErrorCode::InvalidPath => "The request path cannot be matched safely.".to_owned(),
            ErrorCode::MissingCredentials => self.missing_message.clone(),
            ErrorCode::MalformedCredentials => "The API key is malformed.".to_owned(),
            ErrorCode::ConflictingCredentials => {
                "The request carries more than one different API key.".to_owned()
            }
            ErrorCode::InvalidKey => "The API key is not valid.".to_owned(),
            ErrorCode::KeyRevoked => "The API key has been revoked.".to_owned(),
            ErrorCode::KeyExpired => "The API key has expired.".to_owned(),
            ErrorCode::InsufficientScope => format!("This key does not hold the scope {scope}."),
            ErrorCode::PlanUpgradeRequired => format!(
                "The {} plan does not include the scope {scope}; upgrade the plan to use it.",
                denial.plan.as_deref().unwrap_or("current")
            ),
            ErrorCode::RateLimited => format!(
                "Rate limit exceeded for {scope}. Retry after {} seconds.",
                denial.retry_after.unwrap_or(1)
            ),
            ErrorCode::NotConfigured => {
                "The API gateway has not received its configuration yet.".to_owned()
            }
            ErrorCode::RateLimiterUnavailable => {
                "The rate-limit service is unavailable.".to_owned()
            }
            ErrorCode::HttpsRequired => {
                "Use https://; requests over plain HTTP are refused.".to_owned()
            }
            ErrorCode::NotFound => "No such resource.".to_owned(),
        };
        let mut body = String::with_capacity(160);
        body.push_str("{\"error\":{\"code\":\"");
        body.push_str(code.as_str());
        body.push_str("\",\"message\":");
        push_json_string(&mut body, message.as_bytes());
        match code {
            ErrorCode::InsufficientScope => push_field(&mut body, "required_scope", scope),
            ErrorCode::PlanUpgradeRequired => {
                push_field(&mut body, "required_scope", scope);
                push_field(
                    &mut body,
                    "plan",
                    denial.plan.as_deref().unwrap_or_default(),
                );
            }
            ErrorCode::RateLimited => {
                push_field(&mut body, "scope", scope);
                body.push_str(&format!(
                    ",\"retry_after\":{}",
                    denial.retry_after.unwrap_or(1)
                ));
            }
            ErrorCode::HttpsRequired if denial.credential_exposed => {
                body.push_str(",\"credential_exposed\":true");
            }
            _ => {}
        }
        if let Some(doc_url) = &self.doc_url {
            push_field(&mut body, "doc_url", &doc_url.for_code(code));
        }
        body.push_str(",\"request_id\":");
        match request_id {
            Some(id) => push_json_string(&mut body, id),
            None => body.push_str("null"),
        }
        body.push_str("}}");

        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        match code.status() {
            401 => headers.push(("www-authenticate", self.challenge_401.clone())),
            403 if code == ErrorCode::InsufficientScope && denial.via_bearer => headers.push((
                "www-authenticate",
                format!(
                    "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{scope}\"",
                    self.realm
                ),
            )),
            429 => {
                headers.push(("retry-after", denial.retry_after.unwrap_or(1).to_string()));
                if let Some(report) = &denial.rate_limit {
                    headers.extend(report.headers());
                }
            }
            _ => {}
        }
        Reply {
            status: code.status(),
            headers,
            body,
        }
    }
}

fn push_field(body: &mut String, name: &str, value: &str) {
    body.push_str(",\"");
    body.push_str(name);
    body.push_str("\":");
    push_json_string(body, value.as_bytes());
}

/// Appends `bytes` as a JSON string, the one escaper of every JSON the
/// filter writes (error bodies here, audit records in [`crate::audit`]):
/// invalid UTF-8 becomes U+FFFD, and serde_json escapes `"`, `\` and
/// control characters, so client-chosen text (a request id) cannot break
/// the document.
pub(crate) fn push_json_string(out: &mut String, bytes: &[u8]) {
    // Ids, tenants and scopes are nearly always printable ASCII with
    // nothing to escape: written as they are, with no allocation (this runs
    // for every request's audit record).
    if let Ok(plain) = core::str::from_utf8(bytes) {
        if plain
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            out.push('"');
            out.push_str(plain);
            out.push('"');
            return;
        }
    }
    let text = String::from_utf8_lossy(bytes);
    // Serialising a string cannot fail; `null` would keep the document
    // valid all the same.
    match serde_json::to_string(&text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn response_details_are_apikey_and_the_code() {
        for code in ErrorCode::ALL {
            assert_eq!(
                code.response_details(),
                format!("apikey_{}", code.as_str()),
                "{code:?}"
            );
        }
    }
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error(reply: &Reply) -> Value {
        let document: Value = serde_json::from_str(&reply.body).expect("the body is JSON");
        document["error"].clone()
    }

    #[test]
    fn every_code_renders_valid_json_with_its_status() {
        let text = DenialText::default();
        for code in ErrorCode::ALL {
            let reply = text.render(&Denial::new(code), Some(b"req-1"));
            assert_eq!(reply.status, code.status(), "{code:?}");
            let error = error(&reply);
            assert_eq!(error["code"], code.as_str());
            assert_eq!(error["request_id"], "req-1");
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{code:?}"
            );
            assert_eq!(header(&reply, "content-type"), Some("application/json"));
        }
    }

    #[test]
    fn every_401_carries_a_challenge_per_enabled_scheme() {
        let cases = [
            (Schemes::ALL, "Bearer realm=\"api\", ApiKey realm=\"api\""),
            (Schemes::NONE.with(Scheme::Bearer), "Bearer realm=\"api\""),
            (
                Schemes::NONE.with(Scheme::XApiKey),
                "ApiKey realm=\"api\", header=\"X-API-Key\"",
            ),
            (
                Schemes::NONE.with(Scheme::ApiKey).with(Scheme::XApiKey),
                "ApiKey realm=\"api\"",
            ),
        ];
        for (schemes, expected) in cases {
            let reply =
                DenialText::new(schemes, "api").render(&Denial::new(ErrorCode::InvalidKey), None);
            assert_eq!(
                header(&reply, "www-authenticate"),
                Some(expected),
                "{schemes:?}"
            );
        }
        let reply =
            DenialText::new(Schemes::ALL, "crm").render(&Denial::new(ErrorCode::KeyExpired), None);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"crm\", ApiKey realm=\"crm\"")
        );
    }

    #[test]
    fn insufficient_scope_names_the_scope_and_challenges_bearer_clients() {
        let denial = Denial {
            scope: Some("leads:write".into()),
            via_bearer: true,
            ..Denial::new(ErrorCode::InsufficientScope)
        };
        let reply = DenialText::default().render(&denial, None);
        assert_eq!(error(&reply)["required_scope"], "leads:write");
        assert_eq!(
            error(&reply)["message"],
            "This key does not hold the scope leads:write."
        );
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"leads:write\"")
        );
        let reply = DenialText::default().render(
            &Denial {
                via_bearer: false,
                ..denial
            },
            None,
        );
        assert_eq!(header(&reply, "www-authenticate"), None);
    }

    #[test]
    fn plan_upgrade_names_scope_and_plan() {
        let denial = Denial {
            scope: Some("mcp:tools".into()),
            plan: Some("free".into()),
            ..Denial::new(ErrorCode::PlanUpgradeRequired)
        };
        let error = error(&DenialText::default().render(&denial, None));
        assert_eq!(
            (error["required_scope"].as_str(), error["plan"].as_str()),
            (Some("mcp:tools"), Some("free"))
        );
    }

    #[test]
    fn rate_limited_carries_retry_after_and_ratelimit_headers() {
        let report = RateLimitReport {
            pattern: "leads:*".into(),
            quota: 10,
            window_seconds: 60,
            remaining: 0,
            reset_seconds: 6,
        };
        let denial = Denial {
            scope: Some("leads:read".into()),
            retry_after: Some(6),
            rate_limit: Some(report),
            ..Denial::new(ErrorCode::RateLimited)
        };
        let reply = DenialText::default().render(&denial, None);
        assert_eq!(error(&reply)["scope"], "leads:read");
        assert_eq!(error(&reply)["retry_after"], 6);
        assert_eq!(header(&reply, "retry-after"), Some("6"));
        assert_eq!(
            header(&reply, "ratelimit-policy"),
            Some("\"leads:*\";q=10;w=60")
        );
        assert_eq!(header(&reply, "ratelimit"), Some("\"leads:*\";r=0;t=6"));
    }

    #[test]
    fn https_required_says_whether_a_credential_crossed_in_clear() {
        let plain = DenialText::default().render(&Denial::new(ErrorCode::HttpsRequired), None);
        assert_eq!(plain.status, 403);
        assert_eq!(
            error(&plain)["message"],
            "Use https://; requests over plain HTTP are refused."
        );
        assert_eq!(error(&plain).get("credential_exposed"), None);
        let exposed = DenialText::default().render(
            &Denial {
                credential_exposed: true,
                ..Denial::new(ErrorCode::HttpsRequired)
            },
            None,
        );
        assert_eq!(error(&exposed)["credential_exposed"], true);
    }

    #[test]
    fn not_found_is_a_404_that_names_nothing() {
        let reply = DenialText::default().render(&Denial::new(ErrorCode::NotFound), Some(b"r"));
        assert_eq!(reply.status, 404);
        assert_eq!(
            error(&reply),
            serde_json::json!({"code": "not_found", "message": "No such resource.", "request_id": "r"})
        );
    }

    #[test]
    fn every_body_links_its_code_when_error_doc_url_is_set() {
        let text = DenialText::default()
            .with_doc_url(Some(DocUrl::new("https://docs.example.com/errors#{code}")));
        for code in ErrorCode::ALL {
            let reply = text.render(&Denial::new(code), None);
            assert_eq!(
                error(&reply)["doc_url"],
                format!("https://docs.example.com/errors#{}", code.as_str()),
                "{code:?}"
            );
        }
        let fixed = DenialText::default()
            .with_doc_url(Some(DocUrl::new("https://docs.example.com/errors")));
        let reply = fixed.render(&Denial::new(ErrorCode::InvalidKey), None);
        assert_eq!(error(&reply)["doc_url"], "https://docs.example.com/errors");
        let none = DenialText::default().render(&Denial::new(ErrorCode::InvalidKey), None);
        assert_eq!(error(&none).get("doc_url"), None);
    }

    #[test]
    fn an_error_doc_url_must_be_https_with_code_at_most_once() {
        for good in [
            "https://docs.example.com/errors#{code}",
            "https://docs.example.com/errors/{code}?lang=en",
            "https://docs.example.com",
        ] {
            assert!(DocUrl::parse(good).is_ok(), "{good:?} was refused");
        }
        for bad in [
            "http://docs.example.com/{code}",
            "docs.example.com/{code}",
            "https:///errors",
            "https://docs.example.com/{code}/{code}",
            "https://docs.example.com/{kode}",
            "https://docs.example.com/a b",
            "https://docs.example.com/\u{e9}",
            "",
        ] {
            assert!(DocUrl::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn hostile_request_ids_cannot_break_the_body() {
        let reply = DenialText::default().render(
            &Denial::new(ErrorCode::InvalidKey),
            Some(b"a\"b\\c\n\x00\xff\xfe}"),
        );
        assert_eq!(
            error(&reply)["request_id"],
            "a\"b\\c\n\u{0}\u{fffd}\u{fffd}}"
        );
        let reply = DenialText::default().render(&Denial::new(ErrorCode::InvalidKey), None);
        assert_eq!(error(&reply)["request_id"], Value::Null);
    }
}
