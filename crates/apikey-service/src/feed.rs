//! The feed gateways follow (contract §8.3): a snapshot of the whole table
//! in pages, then the changes since a generation, each answer closed by a
//! digest of what a gateway must hold at that generation.
//!
//! Generations come from the database: every change a gateway must see
//! (a key inserted; a key's id, hash, tenant, scopes, plan, env, expiry,
//! revocation or limits updated; the settings stored) appends a row to
//! `feed_log` by trigger, inside the writer's transaction, so the
//! generation (the log's last row id) moves forward with every commit,
//! from the API, from `apikey --db` in another process, or from any
//! future write path alike. Keys are never deleted, so "the changes since
//! G" are the current records of the keys logged after G: a gateway that
//! upserts them by id holds the table at the answer's generation.
//!
//! Snapshot pages are each read in one read transaction and name the
//! generation they were read at. A snapshot taken across writes (pages at
//! different generations) is not restarted: it is completed by the
//! changes since its first page's generation, which hold every key a page
//! may have missed or seen before its change. Restarting could starve
//! behind a steady stream of writes; completing cannot.
//!
//! The digest is additive over keys, so the service (and a gateway) keeps
//! it up to date per change instead of rehashing a million records:
//! `SHA-256("apikey-feed-v1\n" || SHA-256(settings line) || K)`, where `K`
//! is the sum modulo 2^256 of `SHA-256(key line)` (a big-endian number)
//! over every key, each line exactly as the feed sends it. It guards
//! against a cut, corrupted or misapplied transfer, not against a forger
//! (the token and the transport do that). The service keeps the running
//! sum in memory ([`Tally`]), advanced from the log under a lock taken
//! before each read transaction starts, so every answer's digest is the
//! one of the generation its own transaction saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use apikey_core::feed_digest::{line_hash, LineSum};
use rusqlite::Connection;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::error::{ApiError, Kind};
use crate::feed_lines;
use crate::pool::Pool;
use crate::record::KeyRecord;
use crate::settings::{Settings, MAX_KEYS_FIELD};
use crate::settings_store;

/// The wire format's version (`"feed"` in every header line).
pub const FORMAT: u64 = 1;
/// Keys per snapshot page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 10_000;
/// The largest snapshot page.
pub const MAX_PAGE: usize = 100_000;
/// The most keys one changes answer holds; past it, 410 (a snapshot is
/// then about as cheap, and an answer stays a bounded size).
pub const MAX_CHANGES: usize = 10_000;
/// The longest `wait` of a long poll, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// How often the follower looks for writes made by other processes (the
/// API's own writes wake it at once).
pub const POLL: Duration = Duration::from_millis(250);

/// Where the feed stands: the database's epoch and generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Random, made with the database: a gateway that sees another epoch
    /// follows another database (or a restored one) and starts over.
    pub epoch: String,
    /// The last change's generation (0 before any).
    pub generation: i64,
}

/// Reads the head (the first read of a transaction starts its snapshot).
pub fn head(connection: &Connection) -> Result<Head, ApiError> {
    Ok(connection.query_row(
        "SELECT (SELECT epoch FROM feed_meta WHERE id = 1), \
         coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'feed_log'), 0)",
        [],
        |row| {
            Ok(Head {
                epoch: row.get::<_, Option<String>>(0)?.unwrap_or_default(),
                generation: row.get(1)?,
            })
        },
    )?)
}

/// A key as the feed sends it: the §1 key object with only what the
/// filter reads (no name, hint or dates), keys sorted, no spaces.
///
/// Written in one pass from [`LineFields`], whose fields are declared in
/// name order, rather than through a sorted map of cloned values: the
/// same bytes ([`key_line_by_map`], the definition, is checked against it
/// in the tests) at a fraction of the cost, which every stored key pays
/// once when it is written (an import of a million keys among them).
pub fn key_line(record: &KeyRecord) -> String {
    let fields = LineFields {
        env: record.env.as_deref(),
        expires_at: record.expires_at.as_deref(),
        id: &record.id,
        plan: record.plan.as_deref(),
        rate_limits: record.rate_limits.as_ref(),
        revoked: record.revoked,
        scopes: &record.scopes,
        sha256: record.sha256.to_hex(),
        tenant: &record.tenant,
    };
    // serde_json fails only on a map key that is not a string, which no
    // `Value` holds; the definition stands in rather than an empty line.
    serde_json::to_string(&fields).unwrap_or_else(|_| key_line_by_map(record))
}

/// The members of a key line, declared in the order of their names (the
/// canonical order: `"env" < "expires_at" < "id" < … < "tenant"`), the
/// optional ones left out when absent. `scopes` and `rate_limits` are
/// `serde_json` values, whose objects are sorted maps (the crate is built
/// without `preserve_order`), so they come out sorted at every depth.
#[derive(serde::Serialize)]
struct LineFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a str>,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<&'a Value>,
    revoked: bool,
    scopes: &'a Value,
    sha256: String,
    tenant: &'a str,
}

/// The key line by its definition: the members in a sorted map, written
/// out. [`key_line`] writes the same bytes faster.
pub fn key_line_by_map(record: &KeyRecord) -> String {
    let mut map = serde_json::Map::new();
    map.insert("id".to_owned(), json!(record.id));
    map.insert("sha256".to_owned(), json!(record.sha256.to_hex()));
    map.insert("tenant".to_owned(), json!(record.tenant));
    map.insert("scopes".to_owned(), record.scopes.clone());
    map.insert("revoked".to_owned(), json!(record.revoked));
    let mut optional = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            map.insert(name.to_owned(), value);
        }
    };
    optional("plan", record.plan.as_ref().map(|plan| json!(plan)));
    optional("env", record.env.as_ref().map(|env| json!(env)));
    optional(
        "expires_at",
        record.expires_at.as_ref().map(|expiry| json!(expiry)),
    );
    optional("rate_limits", record.rate_limits.clone());
    Value::Object(map).to_string()
}

/// The settings as the feed sends them: `{"settings": {...}}`, the §1
/// configuration without keys (and without the service's own
/// `max_keys_per_tenant`, which the filter never reads).
pub fn settings_line(settings: &Settings) -> String {
    let mut document = settings.document().clone();
    document.remove(MAX_KEYS_FIELD);
    json!({ "settings": document }).to_string()
}

/// The running digest at one generation: each key's line hash by `seq`,
/// their sum, and the settings line's hash.
#[derive(Debug, Default)]
pub struct Tally {
    built: bool,
    epoch: String,
    generation: i64,
    settings: [u8; 32],
    sum: LineSum,
    keys: HashMap<i64, [u8; 32]>,
}

/// What an answer reports of the table at its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The digest (hex).
    pub digest: String,
    /// How many keys the table holds.
    pub keys: usize,
}

impl Tally {
    fn put(&mut self, seq: i64, hash: [u8; 32]) {
        if let Some(old) = self.keys.insert(seq, hash) {
            self.sum.subtract(&old);
        }
        self.sum.add(&hash);
    }

    /// Hashes every key's stored line ([`crate::feed_lines`]): at a
    /// million keys, about 1 s at start where building each line took 3 s.
    fn rebuild(&mut self, connection: &Connection, head: &Head) -> Result<(), ApiError> {
        *self = Self::default();
        self.settings = line_hash(settings_line(&settings_store::load(connection)?).as_bytes());
        let mut statement = connection.prepare("SELECT seq, feed_line FROM keys ORDER BY seq")?;
        let mut rows = statement.query([])?;
        feed_lines::each_line(connection, &mut rows, usize::MAX, &mut |seq, line| {
            self.put(seq, line_hash(line.as_bytes()));
        })?;
        self.built = true;
        self.epoch.clone_from(&head.epoch);
        self.generation = head.generation;
        Ok(())
    }

    /// Brings the tally to `head`, read in the same transaction as
    /// `connection`'s current snapshot.
    fn advance(&mut self, connection: &Connection, head: &Head) -> Result<(), ApiError> {
        if !self.built || self.epoch != head.epoch || head.generation < self.generation {
            return self.rebuild(connection, head);
        }
        if head.generation == self.generation {
            return Ok(());
        }
        let settings_changed: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM feed_log WHERE generation > ?1 AND key_seq IS NULL)",
            [self.generation],
            |row| row.get(0),
        )?;
        if settings_changed {
            self.settings = line_hash(settings_line(&settings_store::load(connection)?).as_bytes());
        }
        changed_lines(connection, self.generation, usize::MAX, &mut |seq, line| {
            self.put(seq, line_hash(line.as_bytes()));
        })?;
        self.generation = head.generation;
        Ok(())
    }

    fn summary(&self) -> Summary {
        Summary {
            digest: self.sum.digest(&self.settings),
            keys: self.keys.len(),
        }
    }
}

/// Visits the current line of each key logged after `since`, oldest
/// first, at most `limit` of them; says whether more were logged.
fn changed_lines(
    connection: &Connection,
    since: i64,
    limit: usize,
    visit: &mut dyn FnMut(i64, &str),
) -> Result<bool, ApiError> {
    let mut statement = connection.prepare_cached(
        "SELECT seq, feed_line FROM keys WHERE seq IN \
         (SELECT key_seq FROM feed_log WHERE generation > ?1) ORDER BY seq",
    )?;
    let mut rows = statement.query([since])?;
    feed_lines::each_line(connection, &mut rows, limit, visit)
}

/// The feed's shared state: the running digest, and the generation last
/// seen committed, published to long polls.
#[derive(Debug)]
pub struct Feed {
    tally: Mutex<Tally>,
    published: watch::Sender<i64>,
    wake: Notify,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    /// A feed that has seen nothing yet ([`follow`] brings it forward).
    pub fn new() -> Self {
        Self {
            tally: Mutex::new(Tally::default()),
            published: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }

    /// Says a write was committed: the follower reads the new generation
    /// now rather than at its next poll.
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// The last generation seen committed.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// Runs `read` in one read transaction, with the head and the table's
    /// summary at the generation that transaction sees. The tally's lock
    /// is held while the transaction starts, so no other answer can move
    /// the tally past this one's generation first.
    pub fn read<T>(
        &self,
        connection: &Connection,
        read: impl FnOnce(&Connection, &Head, &Summary) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let transaction = connection.unchecked_transaction()?;
        let (head, summary) = {
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            let head = head(&transaction)?;
            tally.advance(&transaction, &head)?;
            (head, tally.summary())
        };
        let value = read(&transaction, &head, &summary)?;
        transaction.commit()?;
        Ok(value)
    }
}

/// Keeps the published generation (and the tally) up to date: after each
/// API write at once, and every [`POLL`] for writes made by other
/// processes on the same database. Runs until the runtime stops.
pub async fn follow(feed: Arc<Feed>, pool: Arc<Pool>) {
    loop {
        let reader = Arc::clone(&feed);
        let read = pool
            .read(move |connection| reader.read(connection, |_, head, _| Ok(head.generation)))
            .await;
        match read {
            Ok(generation) => {
                feed.published.send_if_modified(|published| {
                    let moved = *published != generation;
                    *published = generation;
                    moved
                });
            }
            Err(failure) => eprintln!("apikey serve: the feed cannot read the database: {failure}"),
        }
        tokio::select! {
            () = feed.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One feed answer: NDJSON lines, a header first and a trailer last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The header line.
    pub header: Value,
    /// The settings line, when the answer carries settings.
    pub settings: Option<String>,
    /// The key lines, each followed by `\n`, in the answer's order: one
    /// buffer the stored lines are copied into as they are read (no
    /// string per key).
    pub key_lines: String,
    /// How many key lines `key_lines` holds.
    pub keys: usize,
    /// The trailer line.
    pub trailer: Value,
    /// The head the answer was read at.
    pub head: Head,
}

impl Answer {
    /// The body: one line each, `\n` after every line.
    pub fn body(&self) -> String {
        let header = self.header.to_string();
        let trailer = self.trailer.to_string();
        let settings = self.settings.as_deref().unwrap_or_default();
        let size = header.len() + settings.len() + self.key_lines.len() + trailer.len() + 4;
        let mut body = String::with_capacity(size);
        body.push_str(&header);
        body.push('\n');
        if let Some(settings) = &self.settings {
            body.push_str(settings);
            body.push('\n');
        }
        body.push_str(&self.key_lines);
        body.push_str(&trailer);
        body.push('\n');
        body
    }

    /// The key lines, without their `\n`.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.key_lines.lines()
    }

    /// Whether nothing changed (a changes answer with no line to apply).
    pub fn is_empty(&self) -> bool {
        self.settings.is_none() && self.keys == 0
    }
}

/// Collects key lines into one buffer, `\n` after each.
#[derive(Debug, Default)]
struct Lines {
    text: String,
    count: usize,
    last_seq: Option<i64>,
}

impl Lines {
    /// A buffer for about `keys` lines (a key line is about 200 bytes;
    /// reserving ahead saves the copies of growing 2 MB in steps).
    fn with_room(keys: usize) -> Self {
        Self {
            text: String::with_capacity(keys.min(MAX_PAGE).saturating_mul(224)),
            count: 0,
            last_seq: None,
        }
    }

    fn push(&mut self, seq: i64, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        self.count += 1;
        self.last_seq = Some(seq);
    }
}

/// The ETag of the table at `head`.
pub fn etag(head: &Head) -> String {
    format!("\"{}.{}\"", head.epoch, head.generation)
}

fn trailer(head: &Head, summary: &Summary) -> Value {
    json!({"end": true, "generation": head.generation, "keys_total": summary.keys,
           "digest": summary.digest})
}

/// The query of `GET /v1/feed/snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// Start after this `seq` (a previous page's `next_cursor`).
    pub cursor: Option<i64>,
    /// Keys per page.
    pub limit: usize,
}

/// The query of `GET /v1/feed/changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesQuery {
    /// The generation the gateway holds.
    pub since: i64,
    /// The epoch the gateway holds (optional; another one is 410).
    pub epoch: Option<String>,
    /// How long to hold the request while nothing changed.
    pub wait: Duration,
}

/// Splits a query string into its parameters, refusing repeats and any
/// parameter not in `allowed`.
fn parameters(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut found = HashMap::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::invalid(
                &name,
                format!("unknown parameter (accepted: {})", allowed.join(", ")),
            ));
        }
        if found
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::invalid(&name, "given twice"));
        }
    }
    Ok(found)
}

fn whole(name: &str, text: &str, low: u64, high: u64) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|n| (low..=high).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(name, format!("must be a whole number from {low} to {high}"))
        })
}

impl SnapshotQuery {
    /// Reads `cursor=&limit=`.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let found = parameters(query, &["cursor", "limit"])?;
        let cursor = match found.get("cursor").map(String::as_str) {
            None | Some("") => None,
            Some(text) => Some(
                text.strip_prefix('s')
                    .and_then(|digits| digits.parse::<i64>().ok())
                    .filter(|&seq| seq > 0)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "cursor",
                            "not a cursor this feed gave (pass next_cursor as it came)",
                        )
                    })?,
            ),
        };
        let limit = match found.get("limit") {
            None => DEFAULT_PAGE,
            Some(text) => usize::try_from(whole(
                "limit",
                text,
                1,
                u64::try_from(MAX_PAGE).unwrap_or(u64::MAX),
            )?)
            .unwrap_or(MAX_PAGE),
        };
        Ok(Self { cursor, limit })
    }
}

impl ChangesQuery {
    /// Reads `since=&epoch=&wait=`.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut found = parameters(query, &["since", "epoch", "wait"])?;
        let since = found
            .get("since")
            .ok_or_else(|| ApiError::invalid("since", "required (the generation you hold)"))?;
        let since = i64::try_from(whole("since", since, 0, u64::MAX)?)
            .map_err(|_| ApiError::invalid("since", "too large"))?;
        let wait = match found.get("wait") {
            None => 0,
            Some(text) => whole("wait", text, 0, MAX_WAIT_SECONDS)?,
        };
        Ok(Self {
            since,
            epoch: found.remove("epoch"),
            wait: Duration::from_secs(wait),
        })
    }
}

/// One snapshot page: the settings on the first, then keys by `seq`.
pub fn snapshot(
    feed: &Feed,
    connection: &Connection,
    query: SnapshotQuery,
) -> Result<Answer, ApiError> {
    feed.read(connection, |connection, head, summary| {
        let settings = match query.cursor {
            None => Some(settings_line(&settings_store::load(connection)?)),
            Some(_) => None,
        };
        // The stored lines, copied from SQLite's page straight into the
        // body's buffer ([`feed_lines::each_line`]). At a million keys in
        // pages of 10,000 (release build, a 2-core machine): 28.4 ms of
        // service time a page (median) when each line was built from its
        // record, 3.9 ms (0.4 µs a key) read from the stored lines; all
        // 100 pages, read by one client, 3.5 s before and 0.7 s after.
        let mut statement = connection
            .prepare_cached("SELECT seq, feed_line FROM keys WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = statement.query([query.cursor.unwrap_or(0)])?;
        let mut lines = Lines::with_room(query.limit);
        let more = feed_lines::each_line(connection, &mut rows, query.limit, &mut |seq, line| {
            lines.push(seq, line);
        })?;
        drop(rows);
        let next_cursor = lines.last_seq.filter(|_| more).map(|seq| format!("s{seq}"));
        let header = json!({
            "feed": FORMAT, "kind": "snapshot", "epoch": head.epoch,
            "generation": head.generation,
            "cursor": query.cursor.map(|seq| format!("s{seq}")),
            "next_cursor": next_cursor, "settings": settings.is_some(), "keys": lines.count,
        });
        Ok(Answer {
            header,
            settings,
            key_lines: lines.text,
            keys: lines.count,
            trailer: trailer(head, summary),
            head: head.clone(),
        })
    })
}

/// The changes since `query.since`: the settings if they changed, and the
/// current record of every key logged after it, by `seq`.
pub fn changes(
    feed: &Feed,
    connection: &Connection,
    query: &ChangesQuery,
) -> Result<Answer, ApiError> {
    feed.read(connection, |connection, head, summary| {
        let gone = |why: String| {
            Err(ApiError::new(
                Kind::SnapshotRequired,
                format!("{why}: take a new snapshot (GET /v1/feed/snapshot)"),
            )
            .with("generation", json!(head.generation))
            .with("epoch", json!(head.epoch)))
        };
        if query
            .epoch
            .as_deref()
            .is_some_and(|epoch| epoch != head.epoch)
        {
            return gone("the feed's epoch changed (another or a restored database)".to_owned());
        }
        if query.since > head.generation {
            return gone(format!(
                "generation {} is ahead of the feed's {} (another or a restored database)",
                query.since, head.generation
            ));
        }
        let oldest: Option<i64> =
            connection.query_row("SELECT min(generation) FROM feed_log", [], |row| row.get(0))?;
        if oldest.is_some_and(|oldest| query.since < oldest.saturating_sub(1)) {
            return gone(format!(
                "the change log no longer reaches back to generation {}",
                query.since
            ));
        }
        let settings_changed: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM feed_log WHERE generation > ?1 AND key_seq IS NULL)",
            [query.since],
            |row| row.get(0),
        )?;
        let mut lines = Lines::default();
        let more = changed_lines(connection, query.since, MAX_CHANGES, &mut |seq, line| {
            lines.push(seq, line);
        })?;
        if more {
            return gone(format!(
                "more than {MAX_CHANGES} keys changed since generation {}",
                query.since
            ));
        }
        let settings = if settings_changed {
            Some(settings_line(&settings_store::load(connection)?))
        } else {
            None
        };
        let header = json!({
            "feed": FORMAT, "kind": "changes", "epoch": head.epoch, "since": query.since,
            "generation": head.generation, "settings": settings.is_some(), "keys": lines.count,
        });
        Ok(Answer {
            header,
            settings,
            key_lines: lines.text,
            keys: lines.count,
            trailer: trailer(head, summary),
            head: head.clone(),
        })
    })
}

#[cfg(test)]
mod tests;
