//! Following the key service's feed (contract §8.3, docs/configuration.md
//! §10.5): a configuration with `key_source` takes its settings and keys
//! from `apikey serve` instead of from Envoy.
//!
//! A [`FeedClient`] is one root context's follower. It asks for the
//! snapshot a page at a time over an HTTP callout to the `key_source`
//! cluster, then long-polls the changes since the generation it holds,
//! and keeps the whole table as the feed's key lines by id. Every answer is
//! read whole and checked before anything from it is used: the header's
//! announced line count, the trailer right after them, and, once the table
//! has reached the generation a trailer names, the digest of the table
//! against the trailer's. A cut or corrupt answer, or a digest that does
//! not match, drops the working table and starts a new snapshot; the table
//! being served is not touched until a complete, verified one replaces it.
//!
//! Each verified table is handed back as a §1 configuration text (the
//! settings object, the key lines as `keys`, and the `key_source`
//! configuration's `fleet`), which the configuration lifecycle validates
//! and publishes through the same key-table protocol as an ECDS
//! configuration. That costs a whole table's rebuild and rewrite per
//! change: correct at any size, fast only at small ones (the batched
//! shared-data layout is a later step).
//!
//! Failures (no answer, a status other than 200, 410 aside, a refused
//! answer) are retried with exponential backoff from
//! [`FIRST_BACKOFF_MS`] to [`MAX_BACKOFF_MS`], each one logged (never the
//! token) and counted (`apikey.key_source.failures`).

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::header_map;
use crate::host::{Host, HttpCall, LogLevel};
use crate::metrics::Metric;

/// `key_source` as validated (contract §8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySource {
    /// The Envoy cluster reaching the service's `--listen` port.
    pub cluster: String,
    /// The feed token (a credential: never logged or echoed).
    pub token: String,
    /// The `:authority` of the feed requests (default: the cluster name).
    pub authority: String,
    /// The configuration's `fleet`, as JSON, added to every table.
    pub fleet: Option<Vec<u8>>,
}

/// Keys asked for per snapshot page.
pub const PAGE_LIMIT: u32 = 10_000;
/// How long a changes request is held by the service when nothing changed.
pub const LONG_POLL_SECONDS: u32 = 25;
/// Bound on a snapshot page request.
const PAGE_TIMEOUT_MS: u32 = 30_000;
/// Bound on a long poll: the wait plus room for the answer.
const POLL_TIMEOUT_MS: u32 = (LONG_POLL_SECONDS + 10) * 1000;
/// The first retry's delay after a failure; it doubles per failure.
pub const FIRST_BACKOFF_MS: u64 = 200;
/// The longest delay between retries.
pub const MAX_BACKOFF_MS: u64 = 5_000;
/// How often the root context ticks while following (retries, lost calls).
pub const FOLLOW_TICK_MS: u32 = 100;
/// The feed format this client reads.
const FEED_VERSION: u64 = 1;

const MS: u64 = 1_000_000;

/// The sum of the key lines' SHA-256 modulo 2^256, big-endian (§10.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LineSum([u8; 32]);

impl LineSum {
    fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = 0u16;
        for (out, byte) in self.0.iter_mut().rev().zip(hash.iter().rev()) {
            let total = u16::from(*out) + u16::from(*byte) + carry;
            *out = total.to_be_bytes()[1];
            carry = total >> 8;
        }
    }

    fn subtract(&mut self, hash: &[u8; 32]) {
        let mut borrow = 0i16;
        for (out, byte) in self.0.iter_mut().rev().zip(hash.iter().rev()) {
            let mut total = i16::from(*out) - i16::from(*byte) - borrow;
            borrow = 0;
            if total < 0 {
                total += 256;
                borrow = 1;
            }
            *out = u8::try_from(total).unwrap_or_default();
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The table as the feed describes it: the settings line and every key's
/// latest line by id, with the running digest sum.
#[derive(Default)]
struct Table {
    epoch: String,
    generation: u64,
    settings: Option<Vec<u8>>,
    keys: BTreeMap<String, ([u8; 32], Vec<u8>)>,
    sum: LineSum,
}

impl Table {
    fn upsert(&mut self, id: String, line: Vec<u8>) {
        let hash = sha256(&line);
        self.sum.add(&hash);
        if let Some((previous, _)) = self.keys.insert(id, (hash, line)) {
            self.sum.subtract(&previous);
        }
    }

    /// The §10.5 digest, in lowercase hex.
    fn digest(&self) -> Option<String> {
        let settings = self.settings.as_ref()?;
        let mut hasher = Sha256::new();
        hasher.update(b"apikey-feed-v1\n");
        hasher.update(sha256(settings));
        hasher.update(self.sum.0);
        Some(const_hex::encode(hasher.finalize()))
    }

    /// The table as a §1 configuration text; `None` when the settings line
    /// is not an object.
    fn configuration(&self, fleet: Option<&[u8]>) -> Option<Vec<u8>> {
        let settings = self.settings.as_ref()?;
        // Canonical lines (§10.5): `{"settings":{…}}`, no spaces.
        let object = settings
            .strip_prefix(b"{\"settings\":")?
            .strip_suffix(b"}")?;
        let inner = object.strip_prefix(b"{")?.strip_suffix(b"}")?;
        let size = object.len() + self.keys.values().map(|(_, l)| l.len() + 1).sum::<usize>();
        let mut text = Vec::with_capacity(size + 64);
        text.push(b'{');
        text.extend_from_slice(inner);
        if !inner.iter().all(u8::is_ascii_whitespace) {
            text.push(b',');
        }
        text.extend_from_slice(b"\"keys\":[");
        for (index, (_, line)) in self.keys.values().enumerate() {
            if index > 0 {
                text.push(b',');
            }
            text.extend_from_slice(line);
        }
        text.push(b']');
        if let Some(fleet) = fleet {
            text.extend_from_slice(b",\"fleet\":");
            text.extend_from_slice(fleet);
        }
        text.push(b'}');
        Some(text)
    }
}

/// Where the client is in the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading snapshot pages: the next cursor (`None`: the first page) and
    /// the first page's generation.
    Snapshot {
        cursor: Option<String>,
        first_generation: Option<u64>,
    },
    /// A snapshot whose pages named several generations, completed by the
    /// changes since the first page's (wait 0).
    Completing,
    /// Long-polling the changes since the table's generation.
    Following,
}

/// A call in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    token: u32,
    deadline_ns: u64,
}

#[derive(Deserialize)]
struct Header {
    feed: u64,
    kind: String,
    epoch: String,
    generation: u64,
    settings: bool,
    keys: u64,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Trailer {
    end: bool,
    generation: u64,
    keys_total: u64,
    digest: String,
}

#[derive(Deserialize)]
struct KeyId {
    id: String,
}

/// One answer, read and checked for shape.
struct Answer {
    header: Header,
    settings: Option<Vec<u8>>,
    keys: Vec<(String, Vec<u8>)>,
    trailer: Trailer,
}

/// Reads an answer body: exactly the announced lines, then the trailer,
/// then nothing. Any deviation refuses it whole.
fn read_answer(body: &[u8]) -> Result<Answer, String> {
    let body = body
        .strip_suffix(b"\n")
        .ok_or("answer does not end with a newline (cut short)")?;
    let mut lines = body.split(|b| *b == b'\n');
    let header: Header = serde_json::from_slice(lines.next().ok_or("no header")?)
        .map_err(|error| format!("header unreadable: {error}"))?;
    if header.feed != FEED_VERSION {
        return Err(format!("feed version {} unknown", header.feed));
    }
    let settings = if header.settings {
        let line = lines.next().ok_or("settings line missing")?;
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|error| format!("settings unreadable: {error}"))?;
        if !value
            .get("settings")
            .is_some_and(serde_json::Value::is_object)
        {
            return Err("settings line without a settings object".into());
        }
        Some(line.to_vec())
    } else {
        None
    };
    let mut keys = Vec::new();
    for index in 0..header.keys {
        let line = lines
            .next()
            .ok_or_else(|| format!("{index} key lines of {} (cut short)", header.keys))?;
        let key: KeyId = serde_json::from_slice(line)
            .map_err(|error| format!("key line {index} unreadable: {error}"))?;
        keys.push((key.id, line.to_vec()));
    }
    let trailer: Trailer = serde_json::from_slice(lines.next().ok_or("trailer missing")?)
        .map_err(|error| format!("trailer unreadable: {error}"))?;
    if !trailer.end || trailer.generation != header.generation {
        return Err("trailer does not close this answer".into());
    }
    if lines.next().is_some() {
        return Err("lines after the trailer".into());
    }
    Ok(Answer {
        header,
        settings,
        keys,
        trailer,
    })
}

/// Whether `value` can travel in a query string as it is.
fn query_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

/// One root context's follower of the feed.
pub struct FeedClient {
    source: KeySource,
    phase: Phase,
    /// The table being assembled or followed (not necessarily served).
    table: Table,
    in_flight: Option<InFlight>,
    /// Failures in a row (for the backoff).
    failures: u32,
    /// No call before this (monotonic ns).
    next_call_ns: u64,
    /// The generation of the last table handed out.
    served_generation: Option<(String, u64)>,
}

impl FeedClient {
    /// A follower of `source` that has nothing yet.
    pub fn new(source: KeySource) -> Self {
        Self {
            source,
            phase: Phase::Snapshot {
                cursor: None,
                first_generation: None,
            },
            table: Table::default(),
            in_flight: None,
            failures: 0,
            next_call_ns: 0,
            served_generation: None,
        }
    }

    /// The `key_source` followed.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Makes the next call when none is in flight and the backoff allows;
    /// gives up on a call whose answer is long overdue.
    pub fn tick<H: Host>(&mut self, host: &mut H) {
        let now = host.monotonic_ns();
        if let Some(call) = self.in_flight {
            if now < call.deadline_ns {
                return;
            }
            self.in_flight = None;
            self.fail(host, "no answer before the deadline");
        }
        if now >= self.next_call_ns {
            self.call(host);
        }
    }

    fn call<H: Host>(&mut self, host: &mut H) {
        let (path, timeout_ms) = match &self.phase {
            Phase::Snapshot { cursor, .. } => {
                let mut path = format!("/v1/feed/snapshot?limit={PAGE_LIMIT}");
                if let Some(cursor) = cursor {
                    path.push_str("&cursor=");
                    path.push_str(cursor);
                }
                (path, PAGE_TIMEOUT_MS)
            }
            Phase::Completing => (
                format!(
                    "/v1/feed/changes?since={}&epoch={}&wait=0",
                    self.table.generation, self.table.epoch
                ),
                PAGE_TIMEOUT_MS,
            ),
            Phase::Following => (
                format!(
                    "/v1/feed/changes?since={}&epoch={}&wait={LONG_POLL_SECONDS}",
                    self.table.generation, self.table.epoch
                ),
                POLL_TIMEOUT_MS,
            ),
        };
        let authorization = format!("Bearer {}", self.source.token);
        let call = HttpCall {
            cluster: &self.source.cluster,
            authority: &self.source.authority,
            method: "GET",
            path: &path,
            authorization: &authorization,
            content_type: "",
            body: b"",
            timeout_ms,
        };
        match host.dispatch_http(&call) {
            Ok(token) => {
                let deadline_ns = host
                    .monotonic_ns()
                    .saturating_add(u64::from(timeout_ms).saturating_add(5_000) * MS);
                self.in_flight = Some(InFlight { token, deadline_ns });
            }
            Err(error) => self.fail(
                host,
                &format!("cannot call cluster {:?} ({error:?})", self.source.cluster),
            ),
        }
    }

    /// Takes the answer to call `token` (`body_size` bytes); returns a
    /// complete, verified table as a configuration text when this answer
    /// brought one, and makes the next call at once when it may.
    pub fn on_answer<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        body_size: usize,
    ) -> Option<Vec<u8>> {
        if self.in_flight.map(|call| call.token) != Some(token) {
            return None;
        }
        self.in_flight = None;
        let status = answer_status(host);
        let outcome = match status {
            Some(200) => match host.http_response_body(body_size) {
                Ok(body) if body.len() == body_size => self.take(&body),
                Ok(body) => Err(format!("{} of {body_size} body bytes", body.len())),
                Err(error) if body_size == 0 => Err(format!("no body ({error:?})")),
                Err(error) => Err(format!("body unreadable ({error:?})")),
            },
            Some(410) => {
                host.log(
                    LogLevel::Info,
                    "key_source: the feed asks for a new snapshot (410); taking one",
                );
                self.restart();
                Ok(None)
            }
            Some(401) => Err("the feed refused the token (401)".to_owned()),
            Some(other) => Err(format!("status {other}")),
            None => Err("no answer (connection failed, reset or timed out)".to_owned()),
        };
        match outcome {
            Ok(table) => {
                self.failures = 0;
                self.next_call_ns = 0;
                if table.is_some() {
                    host.increment(Metric::KeySourceTables, 1);
                }
                self.call(host);
                table
            }
            Err(reason) => {
                self.fail(host, &reason);
                None
            }
        }
    }

    /// Drops the working table and starts a new snapshot.
    fn restart(&mut self) {
        self.table = Table::default();
        self.phase = Phase::Snapshot {
            cursor: None,
            first_generation: None,
        };
    }

    /// Counts and logs a failure and schedules the retry.
    fn fail<H: Host>(&mut self, host: &mut H, reason: &str) {
        let delay_ms = FIRST_BACKOFF_MS
            .saturating_mul(1u64 << self.failures.min(16))
            .min(MAX_BACKOFF_MS);
        self.failures = self.failures.saturating_add(1);
        self.next_call_ns = host.monotonic_ns().saturating_add(delay_ms * MS);
        host.increment(Metric::KeySourceFailures, 1);
        let serving = match &self.served_generation {
            Some((_, generation)) => format!("the table of generation {generation} stays served"),
            None => "no table yet: answering 503 not_configured".to_owned(),
        };
        host.log(
            LogLevel::Warn,
            &format!(
                "key_source: feed from cluster {:?} failed: {reason}; {serving}; retry {} in {delay_ms} ms",
                self.source.cluster, self.failures
            ),
        );
    }

    /// Applies a 200 answer; `Ok(Some(text))` when the table is complete
    /// and verified and differs from the one handed out last.
    fn take(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let answer = match read_answer(body) {
            Ok(answer) => answer,
            Err(reason) => {
                // A cut or corrupt answer: what was assembled is suspect too.
                self.restart();
                return Err(format!("answer refused: {reason}"));
            }
        };
        let header = &answer.header;
        let expected_kind = match self.phase {
            Phase::Snapshot { .. } => "snapshot",
            Phase::Completing | Phase::Following => "changes",
        };
        if header.kind != expected_kind
            || (!self.table.epoch.is_empty() && header.epoch != self.table.epoch)
        {
            self.restart();
            return Err(format!(
                "answer refused: a {} answer of another epoch or kind",
                header.kind
            ));
        }
        self.table.epoch.clone_from(&header.epoch);
        if let Some(settings) = answer.settings {
            self.table.settings = Some(settings);
        }
        for (id, line) in answer.keys {
            self.table.upsert(id, line);
        }
        let complete = match self.phase.clone() {
            Phase::Snapshot {
                first_generation, ..
            } => {
                let first = first_generation.unwrap_or(header.generation);
                match &header.next_cursor {
                    Some(cursor) if query_safe(cursor) => {
                        self.phase = Phase::Snapshot {
                            cursor: Some(cursor.clone()),
                            first_generation: Some(first),
                        };
                        return Ok(None);
                    }
                    Some(_) => {
                        self.restart();
                        return Err("answer refused: a cursor unfit for a query".into());
                    }
                    None if first == header.generation => true,
                    None => {
                        // Pages across writes: completed by the changes since
                        // the first page's generation (§10.5).
                        self.table.generation = first;
                        self.phase = Phase::Completing;
                        return Ok(None);
                    }
                }
            }
            Phase::Completing | Phase::Following => true,
        };
        if complete {
            self.table.generation = header.generation;
            if !query_safe(&self.table.epoch) {
                self.restart();
                return Err("answer refused: an epoch unfit for a query".into());
            }
            let count = u64::try_from(self.table.keys.len()).unwrap_or(u64::MAX);
            let digest = self.table.digest();
            if count != answer.trailer.keys_total
                || digest.as_deref() != Some(answer.trailer.digest.as_str())
            {
                self.restart();
                return Err(format!(
                    "table refused at generation {}: {count} keys against {}, digest {}",
                    answer.trailer.generation,
                    answer.trailer.keys_total,
                    if digest.is_some() {
                        "differs"
                    } else {
                        "without settings"
                    }
                ));
            }
            self.phase = Phase::Following;
        }
        let current = Some((self.table.epoch.clone(), self.table.generation));
        if current == self.served_generation {
            return Ok(None);
        }
        let text = self
            .table
            .configuration(self.source.fleet.as_deref())
            .ok_or_else(|| "the settings line is not an object".to_owned())?;
        self.served_generation = current;
        Ok(Some(text))
    }

    /// The feed generation of the last table handed out.
    pub fn served_generation(&self) -> Option<u64> {
        self.served_generation
            .as_ref()
            .map(|(_, generation)| *generation)
    }
}

/// The `:status` of the answer being reported; `None` without an answer.
fn answer_status<H: Host>(host: &H) -> Option<u32> {
    let bytes = host.http_response_headers().ok()?;
    let pairs = header_map::parse(&bytes).ok()?;
    pairs
        .iter()
        .find(|(name, _)| *name == b":status")
        .and_then(|(_, value)| core::str::from_utf8(value).ok())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests;
