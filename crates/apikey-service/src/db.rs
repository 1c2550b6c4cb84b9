//! The database: one SQLite file, opened the same way by `apikey serve`
//! and by the CLI's `--db` mode, so either can run beside the other.
//!
//! - The file is created when missing, readable by its owner only (it
//!   holds every key's hash and tenant).
//! - WAL mode: readers never wait for the writer, and a writer's commit is
//!   one append. `synchronous = FULL`: a key whose 201 was sent survives a
//!   power cut as well as a crash (a key shown once must exist afterwards).
//! - A busy timeout: a second writer (another process) waits for the lock
//!   rather than failing; every write is one `BEGIN IMMEDIATE` transaction,
//!   so checks and writes (the tenant cap and the insert) never interleave
//!   with another writer's and no update is lost.
//! - The schema is versioned in `PRAGMA user_version` and brought forward
//!   by [`MIGRATIONS`] when a new release opens an old file; a file made by
//!   a newer release is refused rather than misread.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{ApiError, Kind};

/// How long a writer waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Page cache per connection, in KiB (SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 32 * 1024;

/// The schema, one step per release that changed it. Step `n` brings a
/// database from `user_version = n` to `n + 1`. Steps are never edited
/// once released: a change is a new step.
pub const MIGRATIONS: &[&str] = &[
    // 1: settings and keys (contract §8.1–§8.2).
    "CREATE TABLE settings (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         document TEXT NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE keys (
         seq INTEGER PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         sha256 BLOB NOT NULL UNIQUE,
         tenant TEXT NOT NULL,
         scopes TEXT NOT NULL,
         plan TEXT,
         env TEXT,
         name TEXT,
         hint TEXT,
         expires_at TEXT,
         expires_ns INTEGER,
         revoked INTEGER NOT NULL DEFAULT 0,
         revoked_at INTEGER,
         rate_limits TEXT,
         created_at INTEGER NOT NULL,
         replaced_by TEXT,
         replaces TEXT,
         last_used_at INTEGER
     );
     CREATE INDEX keys_by_tenant ON keys (tenant, seq);",
    // 2: the gateways' feed (contract §8.3, [`crate::feed`]). Every change
    // a gateway must see appends one row to `feed_log` (its generation) in
    // the writer's own transaction, by trigger, so no write path (the API,
    // `apikey --db` in another process, an import-state) can forget it.
    // Existing keys and settings are logged once, so a database made
    // before the feed serves it like any other.
    "CREATE TABLE feed_meta (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         epoch TEXT NOT NULL
     );
     INSERT INTO feed_meta (id, epoch) VALUES (1, lower(hex(randomblob(16))));
     CREATE TABLE feed_log (
         generation INTEGER PRIMARY KEY AUTOINCREMENT,
         key_seq INTEGER
     );
     INSERT INTO feed_log (key_seq) SELECT NULL FROM settings;
     INSERT INTO feed_log (key_seq) SELECT seq FROM keys ORDER BY seq;
     CREATE TRIGGER feed_key_added AFTER INSERT ON keys
     BEGIN INSERT INTO feed_log (key_seq) VALUES (NEW.seq); END;
     CREATE TRIGGER feed_key_changed
     AFTER UPDATE OF id, sha256, tenant, scopes, plan, env, expires_at, revoked, rate_limits ON keys
     BEGIN INSERT INTO feed_log (key_seq) VALUES (NEW.seq); END;
     CREATE TRIGGER feed_settings_added AFTER INSERT ON settings
     BEGIN INSERT INTO feed_log (key_seq) VALUES (NULL); END;
     CREATE TRIGGER feed_settings_changed AFTER UPDATE ON settings
     BEGIN INSERT INTO feed_log (key_seq) VALUES (NULL); END;",
    // 3: key usage reported by gateways (contract §8.4, [`crate::usage`]):
    // requests per key per UTC day. `keys.last_used_at` exists since step
    // 1; the feed's trigger on keys names its columns and leaves it out,
    // so recording a use never appends to `feed_log` (nor wakes a long
    // poll). Keys are never deleted, so no row here outlives its key.
    "CREATE TABLE key_usage (
         key_id TEXT NOT NULL,
         day TEXT NOT NULL,
         count INTEGER NOT NULL,
         PRIMARY KEY (key_id, day)
     ) WITHOUT ROWID;",
    // 4: each key's feed line stored with it (`crate::feed_lines`), so a
    // snapshot page, a changes answer and the digest's rebuild read it
    // instead of building it per key at read time. The trigger empties it
    // in the writer's own transaction whenever a column it is made of
    // changes (the feed log's own list of columns, step 2), whoever the
    // writer is, and a new row's is empty unless its writer set it; a
    // read falls back to building an empty one from the columns, and the
    // service fills empty ones. Filling writes `feed_line` alone, which
    // neither trigger lists: it logs no change and wakes no long poll.
    // The partial index finds the empty ones without a scan. Lines are
    // not built here (SQL cannot build them as the service does): a
    // database of a million keys is migrated in about 0.5 s (the index's
    // one scan; release build), and the service fills its lines in the
    // background (about 6 s, served right meanwhile).
    "ALTER TABLE keys ADD COLUMN feed_line TEXT;
     CREATE INDEX keys_without_feed_line ON keys (seq) WHERE feed_line IS NULL;
     CREATE TRIGGER keys_feed_line_stale
     AFTER UPDATE OF id, sha256, tenant, scopes, plan, env, expires_at, revoked, rate_limits ON keys
     BEGIN UPDATE keys SET feed_line = NULL WHERE seq = NEW.seq; END;",
];

/// Opens (creating when missing) the database at `path`, in WAL mode with
/// the busy timeout, and brings its schema up to date.
pub fn open(path: &Path) -> Result<Connection, ApiError> {
    create_private(path)?;
    // NO_MUTEX, as rusqlite's own default: a `Connection` is used by one
    // thread at a time (it is not `Sync`; the pool holds each behind a
    // `Mutex`), so SQLite's lock around every call (each column of each
    // row read) is pure cost: a snapshot page of 10,000 stored lines took
    // 5.6 ms of CPU with it and 4.7 ms without (release build).
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| cannot_open(path, &error))?;
    configure(&connection).map_err(|error| cannot_open(path, &error))?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(|error| cannot_open(path, &error))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ApiError::new(
            Kind::Internal,
            format!(
                "the database {} would not switch to WAL mode (it is in {mode} mode)",
                path.display()
            ),
        ));
    }
    migrate(&connection, MIGRATIONS)?;
    Ok(connection)
}

fn cannot_open(path: &Path, error: &rusqlite::Error) -> ApiError {
    ApiError::new(
        Kind::Internal,
        format!("cannot open the database {}: {error}", path.display()),
    )
}

/// Creates the file with mode 0600 when it does not exist yet (SQLite
/// would create it with the umask's mode, usually world-readable). Its
/// `-wal` and `-shm` files take the same mode from it.
fn create_private(path: &Path) -> Result<(), ApiError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(ApiError::new(
            Kind::Internal,
            format!("cannot create the database {}: {error}", path.display()),
        )),
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.query_row("PRAGMA journal_mode = WAL", [], |row| {
        row.get::<_, String>(0)
    })?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// The schema version of an open database.
pub fn schema_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Applies the steps of `migrations` the database has not had, in one
/// transaction (a crash leaves it at its old version, whole). Another
/// process migrating at the same time waits for the write lock and then
/// finds nothing left to do.
pub fn migrate(connection: &Connection, migrations: &[&str]) -> Result<(), ApiError> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    if schema_version(connection)? == known {
        return Ok(());
    }
    let transaction =
        rusqlite::Transaction::new_unchecked(connection, TransactionBehavior::Immediate)?;
    let version = schema_version(&transaction)?;
    if version > known {
        return Err(ApiError::new(
            Kind::Internal,
            format!(
                "the database has schema version {version}, made by a newer release; this release knows versions up to {known}"
            ),
        ));
    }
    let done = usize::try_from(version).unwrap_or(0);
    for step in migrations.iter().skip(done) {
        transaction.execute_batch(step)?;
    }
    transaction.pragma_update(None, "user_version", known)?;
    transaction.commit()?;
    Ok(())
}

/// Starts a write: `BEGIN IMMEDIATE` takes the write lock at once, so what
/// the transaction reads (a tenant's count, the settings) cannot change
/// before it writes.
pub fn write(connection: &mut Connection) -> Result<rusqlite::Transaction<'_>, ApiError> {
    Ok(connection.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("apikey-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("keys.db")
    }

    #[test]
    fn a_new_database_is_private_in_wal_mode_at_the_current_version() {
        let path = scratch("new");
        let connection = open(&path).unwrap();
        let mode: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(
            schema_version(&connection).unwrap(),
            MIGRATIONS.len() as i64
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the database file is readable by others");
        }
    }

    #[test]
    fn an_old_database_is_brought_forward_and_keeps_its_rows() {
        let path = scratch("old");
        let connection = Connection::open(&path).unwrap();
        let first = ["CREATE TABLE t (a INTEGER)"];
        migrate(&connection, &first).unwrap();
        connection.execute("INSERT INTO t VALUES (7)", []).unwrap();
        let second = [
            "CREATE TABLE t (a INTEGER)",
            "ALTER TABLE t ADD COLUMN b TEXT",
        ];
        migrate(&connection, &second).unwrap();
        assert_eq!(schema_version(&connection).unwrap(), 2);
        let row: (i64, Option<String>) = connection
            .query_row("SELECT a, b FROM t", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!(row, (7, None), "the row made at version 1 was lost");
        migrate(&connection, &second).unwrap();
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused() {
        let path = scratch("newer");
        let connection = Connection::open(&path).unwrap();
        migrate(&connection, &["CREATE TABLE a (x)", "CREATE TABLE b (x)"]).unwrap();
        let error = migrate(&connection, &["CREATE TABLE a (x)"]).unwrap_err();
        assert!(error.message.contains("newer release"), "{error}");
    }

    #[test]
    fn a_failed_step_leaves_the_database_at_its_old_version() {
        let path = scratch("failed");
        let connection = Connection::open(&path).unwrap();
        migrate(&connection, &["CREATE TABLE a (x)"]).unwrap();
        let error = migrate(
            &connection,
            &["CREATE TABLE a (x)", "CREATE TABLE b (x); nonsense"],
        );
        assert!(error.is_err());
        assert_eq!(schema_version(&connection).unwrap(), 1);
        let tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "half a step was kept");
    }
}
