//! The decision for one request, in the order of contract §3: HTTPS (when
//! required, §7.2), path check, rule match (public passes), extraction,
//! format, hash look-up, revocation, expiry, the path's tenant (§7.3),
//! scope, plan, rate limit, allow.
//!
//! [`Gateway::decide`] is a pure function of the request head, the shared
//! store and a clock, all passed in, so the same code runs in tests and in
//! Envoy. It returns what the edge must do: send a denial, or forward the
//! request with exactly these header edits.

use crate::config::{Config, RateLimitHeaders};
use crate::credentials::{self, CredentialError, Extraction, KeyFormat};
use crate::denial::{Denial, DenialText, ErrorCode, RateLimitReport, Reply};
use crate::fleet::{Fleet, FleetQuery};
use crate::header_map::HeaderPair;
use crate::host::HostError;
use crate::key_cache::KeyCache;
use crate::key_hash::KeyHash;
use crate::key_record::KeyRecord;
use crate::key_table::{Lineage, SharedStore, TableRef};
use crate::path;
use crate::rate_limit;
use crate::rules::{self, Requirement};
use crate::scope::ScopePattern;
use crate::token_lease::{LeaseBook, Taken};

/// The identity headers the filter sets, removed from every request first.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-api-key-id",
    "x-api-tenant",
    "x-api-scopes",
    "x-api-plan",
    "x-api-env",
];

/// The clocks a decision reads (part of the host port; named here too
/// because the decision is where they are read).
pub use crate::host::Clock;

/// The parts of a request the decision reads.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a [u8],
    /// `:path` as the client sent it.
    pub path: &'a [u8],
    /// `x-request-id`.
    pub request_id: Option<&'a [u8]>,
    /// Every header, in order.
    pub headers: &'a [HeaderPair<'a>],
    /// Whether the request reached Envoy over TLS. The edge asks the host
    /// only when [`Gateway::requires_tls_flag`] says so; otherwise `false`.
    pub tls: bool,
}

impl<'a> RequestHead<'a> {
    /// Picks the pseudo-headers and request id out of a header map.
    pub fn from_pairs(headers: &'a [HeaderPair<'a>]) -> Self {
        let mut head = Self {
            method: b"",
            path: b"",
            request_id: None,
            headers,
            tls: false,
        };
        for &(name, value) in headers {
            match name {
                b":method" => head.method = value,
                b":path" => head.path = value,
                _ if name.eq_ignore_ascii_case(b"x-request-id") => head.request_id = Some(value),
                _ => {}
            }
        }
        head
    }
}

/// What must change before an allowed request goes upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names to remove (each once, every value).
    pub remove: Vec<Vec<u8>>,
    /// A new `Authorization` holding only other schemes' elements.
    pub authorization: Option<Vec<u8>>,
    /// Headers to add.
    pub add: Vec<(&'static str, String)>,
    /// The normalised `:path` (with the query), when it changed.
    pub path: Option<Vec<u8>>,
}

/// Where an allowed request's header edits go: the request flow passes
/// its [`crate::host::Host`], tests a map (or a host that refuses).
pub trait RequestEditor {
    /// Removes every value of header `name`.
    fn remove(&mut self, name: &[u8]) -> Result<(), HostError>;
    /// Adds a value of header `name`.
    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError>;
    /// Sets header (or pseudo-header) `name` to one value.
    fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError>;
}

impl HeaderEdits {
    /// Makes every edit through `editor`, in order: removals (forged
    /// identity headers and the credential), the rebuilt `Authorization`,
    /// the identity headers, `:path`. Stops at the first refusal.
    pub fn apply(&self, editor: &mut dyn RequestEditor) -> Result<(), HostError> {
        for name in &self.remove {
            editor.remove(name)?;
        }
        if let Some(authorization) = &self.authorization {
            editor.add(b"authorization", authorization)?;
        }
        for (name, value) in &self.add {
            editor.add(name.as_bytes(), value.as_bytes())?;
        }
        if let Some(path) = &self.path {
            editor.replace(b":path", path)?;
        }
        Ok(())
    }
}

/// An allowed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    /// Header edits for the upstream request.
    pub edits: HeaderEdits,
    /// `RateLimit` headers for the response, when configured to send them.
    pub rate_limit: Option<RateLimitReport>,
    /// The question for the fleet's rate-limit service, when one is
    /// configured and the request counted against a limit: the request
    /// goes upstream only once the service agrees (contract §6).
    pub fleet: Option<FleetQuery>,
}

/// The decision and what it learnt, for the edge, metrics and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed, or denied.
    pub result: Result<Allow, Denial>,
    /// The key's id, once its record was found.
    pub key_id: Option<String>,
    /// The key's tenant, once its record was found.
    pub tenant: Option<String>,
    /// The scope the rule required.
    pub scope: Option<String>,
    /// CAS conflicts retried while taking a token.
    pub cas_conflicts: u32,
    /// Whether the request was denied because conflicts outlasted retries.
    pub contention: bool,
}

impl Decision {
    /// Forwards an allowed decision: applies its header edits through
    /// `editor`. When one is refused the request cannot go upstream (a
    /// credential or a forged identity header could be left in), so it is
    /// refused with 503, and the decision becomes that refusal *before* the
    /// edge writes the audit record and counts it: a refused forward is
    /// never logged or counted as allowed (contract §7.1). A denied
    /// decision is left as it is.
    pub fn forward(&mut self, editor: &mut dyn RequestEditor) -> Result<(), HostError> {
        let Ok(allow) = &self.result else {
            return Ok(());
        };
        let applied = allow.edits.apply(editor);
        if applied.is_err() {
            self.result = Err(Denial::new(ErrorCode::NotConfigured));
        }
        applied
    }

    /// A request denied before any key record was found: there is no
    /// identity to record.
    pub fn denied(denial: Denial) -> Self {
        Self::without_key(Err(denial))
    }

    /// A request allowed without a key (a public route).
    pub fn allowed(allow: Allow) -> Self {
        Self::without_key(Ok(allow))
    }

    fn without_key(result: Result<Allow, Denial>) -> Self {
        Self {
            result,
            key_id: None,
            tenant: None,
            scope: None,
            cas_conflicts: 0,
            contention: false,
        }
    }

    /// The outcome for the key whose `record` was found: its id and tenant
    /// go to the audit record whether it is allowed or not.
    fn for_key(record: &KeyRecord, result: Result<Allow, Denial>, metering: Metering) -> Self {
        Self {
            result,
            key_id: Some(record.id.clone()),
            tenant: Some(record.tenant.clone()),
            scope: None,
            cas_conflicts: metering.cas_conflicts,
            contention: metering.contention,
        }
    }
}

/// What taking a token met in the shared store, for metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Metering {
    /// CAS conflicts retried.
    cas_conflicts: u32,
    /// Whether the bucket could not be used (conflicts outlasted the
    /// retries, or the entry was missing or unreadable).
    contention: bool,
}

/// A configuration ready to serve: rules and plans in worker memory, keys
/// in the shared table `table`.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    table: TableRef,
    text: DenialText,
    keys: KeyCache,
    leases: LeaseBook,
}

impl Gateway {
    /// Serves `config` from the published `table`. The key list is dropped:
    /// keys are read from the shared table, never from worker memory.
    pub fn new(mut config: Config, table: TableRef) -> Self {
        config.keys = Vec::new();
        let text = DenialText::new(config.schemes, &config.realm)
            .with_doc_url(config.error_doc_url.clone());
        Self {
            config,
            table,
            text,
            keys: KeyCache::default(),
            leases: LeaseBook::default(),
        }
    }

    /// The fleet's rate-limit service, when configured.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.config.fleet.as_ref()
    }

    /// Whether decisions need [`RequestHead::tls`]: only a configuration
    /// that requires HTTPS makes the edge ask the host about the connection.
    pub fn requires_tls_flag(&self) -> bool {
        self.config.https.is_some()
    }

    /// The table this gateway reads.
    pub fn table(&self) -> TableRef {
        self.table
    }

    /// Renders a denial for this configuration's schemes and realm.
    pub fn render(&self, denial: &Denial, request_id: Option<&[u8]>) -> Reply {
        self.text.render(denial, request_id)
    }

    /// Decides `request`.
    pub fn decide(
        &self,
        request: &RequestHead<'_>,
        store: &dyn SharedStore,
        clock: &dyn Clock,
    ) -> Decision {
        let format = KeyFormat {
            schemes: self.config.schemes,
            prefixes: self.config.key_prefixes.as_deref(),
        };
        if let Some(https) = &self.config.https {
            if !https.admits(request.tls, request.headers) {
                // Whatever the request carried in a credential scheme
                // crossed the network in clear: say so, never what it was.
                let extraction = credentials::extract(request.headers, &format);
                return Decision::denied(Denial {
                    credential_exposed: !matches!(extraction.result, Err(CredentialError::Missing)),
                    ..Denial::new(ErrorCode::HttpsRequired)
                });
            }
        }
        let normalised = match path::normalise(request.path) {
            Ok(normalised) => normalised,
            Err(_) => return Decision::denied(Denial::new(ErrorCode::InvalidPath)),
        };
        let Ok(route) = self.config.rules.resolve(request.method, &normalised.path) else {
            return Decision::denied(Denial::new(ErrorCode::InvalidPath));
        };
        let extraction = credentials::extract(request.headers, &format);
        // Built only for a request that goes upstream: a denial needs none.
        let edits = || {
            let mut edits = self.upstream_edits(request.headers, &extraction);
            if normalised.changed() {
                edits.path = Some(normalised.target());
            }
            edits
        };
        let scope = match route.requirement {
            Requirement::Public => {
                return Decision::allowed(Allow {
                    edits: edits(),
                    rate_limit: None,
                    fleet: None,
                });
            }
            Requirement::Key { scope } => scope.as_deref(),
        };
        let mut decision = self.authorise(
            &extraction,
            scope,
            route.tenant.as_deref(),
            store,
            clock,
            edits,
        );
        decision.scope = scope.map(str::to_owned);
        decision
    }

    fn authorise(
        &self,
        extraction: &Extraction<'_>,
        scope: Option<&str>,
        tenant_segment: Option<&[u8]>,
        store: &dyn SharedStore,
        clock: &dyn Clock,
        edits: impl FnOnce() -> HeaderEdits,
    ) -> Decision {
        let presented = match &extraction.result {
            Ok(presented) => presented,
            Err(error) => {
                let code = match error {
                    CredentialError::Missing => ErrorCode::MissingCredentials,
                    CredentialError::Malformed => ErrorCode::MalformedCredentials,
                    CredentialError::Conflicting => ErrorCode::ConflictingCredentials,
                };
                return Decision::denied(Denial::new(code));
            }
        };
        let hash = KeyHash::of(presented.key);
        let record = match self.keys.lookup(store, self.table, &hash) {
            Ok(Some(record)) => record,
            Ok(None) => return Decision::denied(Denial::new(ErrorCode::InvalidKey)),
            // The table cannot be read: fail closed, as if unconfigured.
            Err(_) => return Decision::denied(Denial::new(ErrorCode::NotConfigured)),
        };
        let refused = |denial| Decision::for_key(&record, Err(denial), Metering::default());
        let plan = self.config.plan(record.plan);
        let denial = |code| Denial {
            scope: scope.map(str::to_owned),
            ..Denial::new(code)
        };
        if record.revoked {
            return refused(denial(ErrorCode::KeyRevoked));
        }
        if record
            .expires_at
            .is_some_and(|expires_at| clock.wall_ns() >= expires_at)
        {
            return refused(denial(ErrorCode::KeyExpired));
        }
        // Another tenant's resource is answered as if it did not exist,
        // before scopes and limits say anything about it (§7.3).
        if tenant_segment.is_some_and(|segment| {
            !rules::segment_names_tenant(
                segment,
                &record.tenant,
                self.config.rules.case_insensitive(),
            )
        }) {
            return refused(Denial::new(ErrorCode::NotFound));
        }
        if let Some(scope) = scope {
            if !record.holds(scope) {
                return refused(Denial {
                    via_bearer: presented.via_bearer,
                    ..denial(ErrorCode::InsufficientScope)
                });
            }
            let granted = plan.and_then(|plan| plan.scopes.as_deref());
            if granted.is_some_and(|granted| !granted.iter().any(|pattern| pattern.matches(scope)))
            {
                return refused(Denial {
                    plan: plan.map(|plan| plan.name.clone()),
                    ..denial(ErrorCode::PlanUpgradeRequired)
                });
            }
        }
        let limit = rate_limit::select(&record.limits, plan.map(|plan| &plan.rate_limits), scope);
        let mut report = None;
        let mut fleet = None;
        let mut metering = Metering::default();
        if let Some((pattern, limit)) = limit {
            let lineage = &self.table.lineage;
            match take_token(
                &self.leases,
                store,
                lineage,
                &record,
                pattern,
                limit,
                clock,
                &mut metering,
            ) {
                Ok(taken) => {
                    // Written only where it is sent.
                    report = (self.config.rate_limit_headers == RateLimitHeaders::Always)
                        .then(|| bucket_report(pattern, limit, taken.0, taken.1));
                    fleet = self.config.fleet.as_ref().and_then(|fleet| {
                        FleetQuery::new(
                            fleet,
                            &record.id,
                            pattern.as_str(),
                            limit,
                            scope.unwrap_or(rate_limit::NO_SCOPE),
                        )
                    });
                }
                Err(retry_after) => {
                    let limited = Denial {
                        scope: Some(scope.unwrap_or(rate_limit::NO_SCOPE).to_owned()),
                        retry_after: Some(retry_after),
                        rate_limit: Some(bucket_report(pattern, limit, 0, retry_after)),
                        ..Denial::new(ErrorCode::RateLimited)
                    };
                    return Decision::for_key(&record, Err(limited), metering);
                }
            }
        }
        let mut edits = edits();
        edits.add.extend(identity_headers(
            &record,
            plan.map(|plan| plan.name.as_str()),
        ));
        let rate_limit = report;
        let allow = Allow {
            edits,
            rate_limit,
            fleet,
        };
        Decision::for_key(&record, Ok(allow), metering)
    }

    /// Removes forged identity headers and, unless the credential is to be
    /// forwarded, the credential itself (other schemes' elements stay).
    fn upstream_edits(
        &self,
        headers: &[HeaderPair<'_>],
        extraction: &Extraction<'_>,
    ) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        let mut remove = |name: &[u8]| {
            if !edits
                .remove
                .iter()
                .any(|seen| seen.eq_ignore_ascii_case(name))
            {
                edits.remove.push(name.to_vec());
            }
        };
        for &(name, _) in headers {
            let spelled_with_underscore = name.contains(&b'_');
            if IDENTITY_HEADERS
                .iter()
                .any(|h| same_header_name(name, h.as_bytes()))
                || (spelled_with_underscore
                    && (same_header_name(name, b"x-api-key")
                        || same_header_name(name, b"authorization")))
            {
                remove(name);
            }
        }
        if !self.config.forward_credential {
            if extraction.authorization_had_credential {
                remove(b"authorization");
                if !extraction.other_authorization.is_empty() {
                    edits.authorization =
                        Some(extraction.other_authorization.join(b", ".as_slice()));
                }
            }
            if extraction.x_api_key_present {
                remove(b"x-api-key");
            }
        }
        edits
    }
}

/// Whether header `name` is `canonical` (lower case, with dashes) once
/// folded to lower case with `_` read as `-`: how Envoy and upstreams may
/// read a forged identity header. Compared byte by byte, with no copy.
fn same_header_name(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&b, &c)| {
            let folded = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
            folded == c
        })
}

/// Takes a token from the (key, pattern) bucket, through this worker's
/// leases: the whole tokens left and the seconds until the next one, or the
/// seconds to wait.
#[allow(clippy::too_many_arguments)]
fn take_token(
    leases: &LeaseBook,
    store: &dyn SharedStore,
    lineage: &Lineage,
    record: &KeyRecord,
    pattern: &ScopePattern,
    limit: &rate_limit::Limit,
    clock: &dyn Clock,
    metering: &mut Metering,
) -> Result<(u64, u64), u64> {
    match leases.take(
        store,
        lineage,
        &record.id,
        pattern.as_str(),
        limit,
        clock.monotonic_ns(),
    ) {
        Ok(Taken::Allowed {
            remaining,
            reset_seconds,
            conflicts,
        }) => {
            metering.cas_conflicts = conflicts;
            Ok((remaining, reset_seconds))
        }
        Ok(Taken::Denied { retry_after }) => Err(retry_after),
        Ok(Taken::Unavailable { conflicts }) => {
            metering.cas_conflicts = conflicts;
            metering.contention = true;
            Err(1)
        }
        // An unreadable store: never admit unmetered.
        Err(_) => {
            metering.contention = true;
            Err(1)
        }
    }
}

fn bucket_report(
    pattern: &ScopePattern,
    limit: &rate_limit::Limit,
    remaining: u64,
    reset_seconds: u64,
) -> RateLimitReport {
    RateLimitReport {
        pattern: pattern.as_str().to_owned(),
        quota: limit.requests,
        window_seconds: limit.period_seconds,
        remaining,
        reset_seconds,
    }
}

fn identity_headers(record: &KeyRecord, plan: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-api-key-id", record.id.clone()),
        ("x-api-tenant", record.tenant.clone()),
        ("x-api-scopes", record.scopes_header.clone()),
    ];
    if let Some(plan) = plan {
        headers.push(("x-api-plan", plan.to_owned()));
    }
    if let Some(env) = &record.env {
        headers.push(("x-api-env", env.clone()));
    }
    headers
}

#[cfg(test)]
mod tests;
