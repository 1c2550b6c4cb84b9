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
//! What the client hands back is ready for the shared table
//! ([`crate::live_table`]): a verified snapshot as shards of records, or
//! verified changes as the records to rewrite. Each key line is validated
//! as a §1 key against the current settings' plans and fleet; a line that
//! fails is logged with its id, counted, and its key left out of the table
//! (fails closed: that key answers `invalid_key`), the rest served. A
//! settings change that changes the plans, which every record's scopes
//! depend on, takes a new snapshot; other settings changes are applied at
//! once.
//!
//! The client keeps, per key id, the hash of its line (for the digest) and
//! of its key (to find its record), never the lines themselves: 64 bytes
//! and the id per key, not the whole table.
//!
//! Failures (no answer, a status other than 200, 410 aside, a refused
//! answer) are retried with exponential backoff from
//! [`FIRST_BACKOFF_MS`] to [`MAX_BACKOFF_MS`], each one logged (never the
//! token) and counted (`apikey.key_source.failures`).

use crate::feed_digest::{line_hash, LineSum};
use serde::Deserialize;

use crate::config::{check_fleet_periods, Config, KeySpec};
use crate::fleet::Fleet;

use crate::host::{http_answer_status, Host, HttpCall, LogLevel};
use crate::key_record;
use crate::key_table::buckets::is_limited;
use crate::live_table::{Changes, NewTable, ShardSet};
use crate::metrics::Metric;

mod id_index;

use self::id_index::{id_key, IdIndex, Known};

/// `key_source` as validated (contract §8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySource {
    /// The Envoy cluster reaching the service's `--listen` port.
    pub cluster: String,
    /// The feed token (a credential: never logged or echoed).
    pub token: String,
    /// The `:authority` of the feed requests (default: the cluster name).
    pub authority: String,
    /// The configuration's `fleet`: it replaces the settings' own in every
    /// table this gateway takes ([`with_gateway_fleet`]).
    pub fleet: Option<Fleet>,
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

/// The table as the feed describes it: the settings, and what the digest
/// and the records need of every key, by id.
#[derive(Default)]
struct Table {
    epoch: String,
    generation: u64,
    /// The settings line as received.
    settings_line: Option<Vec<u8>>,
    /// The settings as a configuration without keys, and its text.
    settings: Option<(Config, Vec<u8>)>,
    ids: IdIndex,
    /// How many ids have a record in the table.
    records: u64,
    sum: LineSum,
}

impl Table {
    /// The §10.5 digest over `sum` and the settings line, in lowercase hex.
    fn digest(&self, sum: &LineSum, settings_line: Option<&[u8]>) -> Option<String> {
        let settings = settings_line.or(self.settings_line.as_deref())?;
        Some(sum.digest(&line_hash(settings)))
    }

    /// Records `id`'s new line hash and key; returns what it replaced.
    fn remember(&mut self, id: &str, known: Known) -> Option<Known> {
        self.sum.add(&known.line);
        self.records += u64::from(known.key.is_some());
        let previous = self.ids.insert(id_key(id), known);
        if let Some(previous) = previous {
            self.sum.subtract(&previous.line);
            self.records -= u64::from(previous.key.is_some());
        }
        previous
    }
}

/// The settings line as a §1 configuration without keys, read strictly
/// and validated, with the gateway's `fleet` applied; and the settings
/// text every VM of the process reads from shared data (the service's
/// settings as sent: each VM applies its own configuration's fleet).
fn settings_configuration(line: &[u8], fleet: Option<&Fleet>) -> Result<(Config, Vec<u8>), String> {
    // Canonical lines (§10.5): `{"settings":{…}}`, no spaces.
    let inner = line
        .strip_prefix(b"{\"settings\":")
        .and_then(|rest| rest.strip_suffix(b"}"))
        .ok_or("the settings line is not {\"settings\":{…}}")?;
    let config = match Config::parse(inner) {
        Ok(Some(config)) if config.key_source.is_none() && config.keys.is_empty() => config,
        Ok(_) => return Err("the settings hold keys or a key_source".to_owned()),
        Err(error) => return Err(format!("the settings are invalid: {error}")),
    };
    Ok((with_gateway_fleet(config, fleet)?, inner.to_vec()))
}

/// `config` (settings from the key service) with the gateway's `fleet`, when
/// it has one, in place of the settings' own: which rate-limit service a
/// gateway asks depends on where it runs, so the Envoy configuration
/// decides. Every plan's limits must then suit that fleet, as a §1
/// configuration's would.
pub fn with_gateway_fleet(mut config: Config, fleet: Option<&Fleet>) -> Result<Config, String> {
    let Some(fleet) = fleet else {
        return Ok(config);
    };
    for plan in &config.plans {
        check_fleet_periods(
            &format!("plans.{}.rate_limits", plan.name),
            &plan.rate_limits,
        )
        .map_err(|error| format!("the settings are invalid with this gateway's fleet: {error}"))?;
    }
    config.fleet = Some(fleet.clone());
    Ok(config)
}

/// A table being assembled from snapshot pages.
#[derive(Default)]
struct Building {
    shards: ShardSet,
    limited: Vec<String>,
}

/// What a verified answer brings.
#[derive(Debug)]
pub enum Update {
    /// A complete table, to write into the bank not serving.
    Table(NewTable),
    /// Changes to the table serving.
    Changes(Changes),
}

/// What follows the answer being applied, decided before its lines are.
enum Next {
    /// Another snapshot page (its cursor), the snapshot's first generation.
    Page(String, u64),
    /// The changes since the first page's generation complete the snapshot.
    Complete(u64),
    /// The table is complete: verify it against the trailer.
    Verify,
}

/// Refused key lines are logged by id up to this many per answer, then
/// summed up in one line.
const REFUSALS_LOGGED: usize = 10;

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

/// One answer, read and checked for shape; its lines borrowed from the
/// body (each key line is parsed once, when it is applied).
struct Answer<'a> {
    header: Header,
    settings: Option<Vec<u8>>,
    keys: Vec<&'a [u8]>,
    trailer: Trailer,
}

/// Reads an answer body: exactly the announced lines, then the trailer,
/// then nothing. Any deviation refuses it whole.
fn read_answer(body: &[u8]) -> Result<Answer<'_>, String> {
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
    let mut keys = Vec::with_capacity(usize::try_from(header.keys).unwrap_or(0).min(1 << 20));
    for index in 0..header.keys {
        let line = lines
            .next()
            .ok_or_else(|| format!("{index} key lines of {} (cut short)", header.keys))?;
        keys.push(line);
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
    /// The records of a snapshot being assembled.
    building: Option<Building>,
    /// When the snapshot's first page was asked for (monotonic ns).
    snapshot_began_ns: u64,
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
            building: None,
            snapshot_began_ns: 0,
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
        if matches!(self.phase, Phase::Snapshot { cursor: None, .. }) {
            self.snapshot_began_ns = host.monotonic_ns();
        }
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

    /// Takes the answer to call `token` (`body_size` bytes); returns what
    /// it brought to the shared table, verified, and makes the next call at
    /// once when it may.
    pub fn on_answer<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        body_size: usize,
    ) -> Option<Update> {
        if self.in_flight.map(|call| call.token) != Some(token) {
            return None;
        }
        self.in_flight = None;
        let status = http_answer_status(host);
        let outcome = match status {
            Some(200) => match host.http_response_body(body_size) {
                Ok(body) if body.len() == body_size => self.take(host, &body),
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
            Ok(update) => {
                // The next call goes out on the caller's next `tick`, right
                // after it wrote what this answer brought.
                self.failures = 0;
                self.next_call_ns = 0;
                update
            }
            Err(reason) => {
                self.fail(host, &reason);
                None
            }
        }
    }

    /// Drops the working table and starts a new snapshot (also when the
    /// shared table could not take what this client handed out). A call
    /// in flight (a next page asked for early) is forgotten: its answer is
    /// ignored.
    pub fn restart(&mut self) {
        self.table = Table::default();
        self.building = None;
        self.in_flight = None;
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

    /// Applies a 200 answer: what it brings once verified.
    fn take<H: Host>(&mut self, host: &mut H, body: &[u8]) -> Result<Option<Update>, String> {
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
        if !query_safe(&header.epoch) {
            self.restart();
            return Err("answer refused: an epoch unfit for a query".into());
        }
        self.table.epoch.clone_from(&header.epoch);
        let outcome = match self.phase {
            Phase::Snapshot { .. } | Phase::Completing => self.take_building(host, answer),
            Phase::Following => self.take_changes(host, answer),
        };
        if outcome.is_err() {
            self.restart();
        }
        outcome
    }

    /// A snapshot page, or the changes completing a snapshot: added to the
    /// table being assembled, handed out once complete and verified. The
    /// next page is asked for before this one is processed, so the service
    /// reads it while the VM works.
    fn take_building<H: Host>(
        &mut self,
        host: &mut H,
        answer: Answer<'_>,
    ) -> Result<Option<Update>, String> {
        let header = &answer.header;
        let next = match &self.phase {
            Phase::Snapshot {
                first_generation, ..
            } => {
                let first = first_generation.unwrap_or(header.generation);
                match &header.next_cursor {
                    Some(cursor) if query_safe(cursor) => Next::Page(cursor.clone(), first),
                    Some(_) => return Err("answer refused: a cursor unfit for a query".into()),
                    None if first == header.generation => Next::Verify,
                    // Pages across writes: completed by the changes since
                    // the first page's generation (§10.5).
                    None => Next::Complete(first),
                }
            }
            Phase::Completing | Phase::Following => Next::Verify,
        };
        if let Next::Page(cursor, first) = &next {
            self.phase = Phase::Snapshot {
                cursor: Some(cursor.clone()),
                first_generation: Some(*first),
            };
            self.call(host);
        }
        if let Some(line) = answer.settings {
            if self.table.settings_line.as_ref() != Some(&line) {
                let settings = settings_configuration(&line, self.source.fleet.as_ref())?;
                if self.building.is_some()
                    && self
                        .table
                        .settings
                        .as_ref()
                        .map(|(config, _)| &config.plans)
                        != Some(&settings.0.plans)
                {
                    // Records already assembled carry the old plans' scopes.
                    return Err("the plans changed during the snapshot; taking a new one".into());
                }
                self.table.settings = Some(settings);
                self.table.settings_line = Some(line);
            }
        }
        // Taken out while the table records the lines; put back below.
        let Some(settings) = self.table.settings.take() else {
            return Err("a snapshot without settings".into());
        };
        let config = &settings.0;
        if self.building.is_none() {
            let expected = answer.trailer.keys_total;
            self.table.ids =
                IdIndex::with_capacity(usize::try_from(expected).unwrap_or(0).min(1 << 24));
        }
        let building = self.building.get_or_insert_with(|| Building {
            shards: ShardSet::for_keys(answer.trailer.keys_total),
            limited: Vec::new(),
        });
        let mut refused = Refusals::default();
        let mut unreadable = None;
        for line in &answer.keys {
            let parsed = match parse_line(config, line) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    unreadable = Some(reason);
                    break;
                }
            };
            let (id, known, record) = parsed.into_record(config, &mut refused);
            let previous = self.table.remember(&id, known);
            if record.as_ref().is_some_and(|new| new.limited) {
                building.limited.push(id);
            }
            match (previous, &record) {
                // A snapshot names each key once: appended, not searched for.
                (None, Some(new)) => building.shards.push(&new.hash, &new.record),
                _ => {
                    if let Some(old) = previous.and_then(|p| p.key) {
                        building.shards.upsert(&old, None);
                    }
                    if let Some(new) = &record {
                        building.shards.upsert(&new.hash, Some(&new.record));
                    }
                }
            }
        }
        self.table.settings = Some(settings);
        if let Some(reason) = unreadable {
            return Err(format!("answer refused: {reason}"));
        }
        refused.report(host);
        if !matches!(next, Next::Page(..)) {
            // The last page is in: what follows looks ids up.
            self.table.ids.seal();
        }
        match next {
            Next::Page(..) => return Ok(None),
            Next::Complete(first) => {
                self.table.generation = first;
                self.phase = Phase::Completing;
                return Ok(None);
            }
            Next::Verify => {}
        }
        self.table.generation = header.generation;
        self.verify(self.table.ids.len(), &self.table.sum, None, &answer.trailer)?;
        self.phase = Phase::Following;
        let Some(building) = self.building.take() else {
            return Ok(None);
        };
        let settings = self
            .table
            .settings
            .as_ref()
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        self.served_generation = Some((self.table.epoch.clone(), self.table.generation));
        Ok(Some(Update::Table(NewTable {
            shards: building.shards,
            settings,
            generation: self.table.generation,
            limited: building.limited,
            began_ns: self.snapshot_began_ns,
        })))
    }

    /// The changes since the table's generation: verified against the
    /// trailer before anything of them is kept.
    fn take_changes<H: Host>(
        &mut self,
        host: &mut H,
        answer: Answer<'_>,
    ) -> Result<Option<Update>, String> {
        let settings_line = answer
            .settings
            .filter(|line| self.table.settings_line.as_ref() != Some(line));
        let new_settings = match &settings_line {
            Some(line) => Some(settings_configuration(line, self.source.fleet.as_ref())?),
            None => None,
        };
        let Some(config) = new_settings
            .as_ref()
            .or(self.table.settings.as_ref())
            .map(|(config, _)| config)
        else {
            return Err("changes without settings".into());
        };
        let parsed = answer
            .keys
            .iter()
            .map(|line| parse_line(config, line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| format!("answer refused: {reason}"))?;
        let mut sum = self.table.sum;
        let mut count = self.table.ids.len();
        for line in &parsed {
            match self.table.ids.get(&id_key(&line.id)) {
                Some(previous) => sum.subtract(&previous.line),
                None => count += 1,
            }
            sum.add(&line.line_hash);
        }
        self.verify(count, &sum, settings_line.as_deref(), &answer.trailer)?;
        let generation = answer.header.generation;
        if settings_line.is_none()
            && parsed.is_empty()
            && Some((self.table.epoch.clone(), generation)) == self.served_generation
        {
            return Ok(None);
        }
        let mut settings_text = None;
        if let (Some(line), Some(settings)) = (settings_line, new_settings) {
            let plans_changed = self
                .table
                .settings
                .as_ref()
                .map(|(config, _)| &config.plans)
                != Some(&settings.0.plans);
            if plans_changed {
                host.log(
                    LogLevel::Info,
                    "key_source: the plans changed; taking a new snapshot (the current table serves meanwhile)",
                );
                self.restart();
                return Ok(None);
            }
            settings_text = Some(settings.1.clone());
            self.table.settings = Some(settings);
            self.table.settings_line = Some(line);
        }
        // Taken out while the table records the lines; put back below.
        let Some(settings) = self.table.settings.take() else {
            return Err("changes without settings".into());
        };
        let config = &settings.0;
        let mut changes = Changes {
            settings: settings_text,
            generation,
            ..Changes::default()
        };
        let mut refused = Refusals::default();
        for parsed in parsed {
            let (id, known, record) = parsed.into_record(config, &mut refused);
            let previous = self.table.ids.get(&id_key(&id));
            if let Some(old) = previous
                .and_then(|p| p.key)
                .filter(|old| Some(*old) != known.key)
            {
                changes.records.push((old, None));
            }
            if let Some(NewRecord {
                hash,
                record,
                limited,
            }) = record
            {
                if limited {
                    changes.limited.push(id.clone());
                }
                changes.records.push((hash, Some(record)));
            }
            self.table.remember(&id, known);
        }
        self.table.settings = Some(settings);
        refused.report(host);
        self.table.generation = generation;
        changes.key_count = self.table.records;
        self.served_generation = Some((self.table.epoch.clone(), generation));
        Ok(Some(Update::Changes(changes)))
    }

    /// Checks the table's key count and digest (`count` keys, `sum` and,
    /// when it changed, `settings_line`) against the answer's trailer.
    fn verify(
        &self,
        count: usize,
        sum: &LineSum,
        settings_line: Option<&[u8]>,
        trailer: &Trailer,
    ) -> Result<(), String> {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        let digest = self.table.digest(sum, settings_line);
        if count == trailer.keys_total && digest.as_deref() == Some(trailer.digest.as_str()) {
            return Ok(());
        }
        Err(format!(
            "table refused at generation {}: {count} keys against {}, digest {}",
            trailer.generation,
            trailer.keys_total,
            if digest.is_some() {
                "differs"
            } else {
                "without settings"
            }
        ))
    }
}

/// Key lines refused in one answer.
#[derive(Default)]
struct Refusals {
    count: usize,
    logged: Vec<String>,
}

impl Refusals {
    fn add(&mut self, id: &str, error: &str) {
        self.count += 1;
        if self.logged.len() < REFUSALS_LOGGED {
            self.logged.push(format!(
                "key_source: key {id:?} left out of the table (answers invalid_key): {error}"
            ));
        }
    }

    fn report<H: Host>(self, host: &mut H) {
        if self.count == 0 {
            return;
        }
        host.increment(Metric::KeySourceFailures, 1);
        for line in &self.logged {
            host.log(LogLevel::Warn, line);
        }
        if self.count > self.logged.len() {
            host.log(
                LogLevel::Warn,
                &format!(
                    "key_source: {} more keys left out of the table",
                    self.count - self.logged.len()
                ),
            );
        }
    }
}

/// A key line's record, ready for the shared table.
struct NewRecord {
    /// Its key hash (where the record goes).
    hash: [u8; 32],
    /// The record.
    record: Vec<u8>,
    /// Whether the key takes tokens (its bucket entry must exist).
    limited: bool,
}

/// A key line read once: its id, its hash (for the digest) and its key
/// validated against the settings, or why it was refused.
struct ParsedLine {
    id: String,
    line_hash: [u8; 32],
    key: Result<KeySpec, String>,
}

/// Reads key line `line` against `config`; `Err` only when the line does
/// not even say its id (the answer is then refused whole).
fn parse_line(config: &Config, line: &[u8]) -> Result<ParsedLine, String> {
    let line_hash = line_hash(line);
    match config.parse_key(line) {
        Ok(key) => Ok(ParsedLine {
            id: key.id.clone(),
            line_hash,
            key: Ok(key),
        }),
        Err(error) => {
            let id: KeyId = serde_json::from_slice(line)
                .map_err(|unreadable| format!("a key line is unreadable: {unreadable}"))?;
            Ok(ParsedLine {
                id: id.id,
                line_hash,
                key: Err(error.to_string()),
            })
        }
    }
}

impl ParsedLine {
    /// Its id, what the table keeps of it, and its record (`None` when
    /// refused, counted in `refused`).
    fn into_record(
        self,
        config: &Config,
        refused: &mut Refusals,
    ) -> (String, Known, Option<NewRecord>) {
        match self.key {
            Ok(key) => {
                let hash = *key.hash.as_bytes();
                let record = NewRecord {
                    hash,
                    record: key_record::encode(&key, &config.plans, 0),
                    limited: is_limited(&key, config),
                };
                let known = Known {
                    line: self.line_hash,
                    key: Some(hash),
                };
                (self.id, known, Some(record))
            }
            Err(error) => {
                refused.add(&self.id, &error);
                let known = Known {
                    line: self.line_hash,
                    key: None,
                };
                (self.id, known, None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
