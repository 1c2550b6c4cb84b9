//! The key service of the API-key gateway (contract §8.1–§8.2): keys and
//! settings in an SQLite database, managed through a JSON API over HTTP
//! (`apikey serve`), or directly by the CLI (`apikey --db`).
//!
//! Layers, each its own module: [`db`] opens the file (WAL, busy timeout,
//! versioned migrations); [`settings`] holds the §1 settings and checks
//! keys against them with the core's own validator; [`keys`], [`import`]
//! and [`settings_store`] are the operations, each one transaction;
//! [`feed`] is what gateways follow (a snapshot, then changes, with a
//! digest), read from each key's line stored by [`feed_lines`]; [`usage`] what they report back (requests per key per day,
//! and each key's last use); [`http`] maps routes to them, with [`auth`]'s constant-time token check
//! and [`metrics`]; [`server`] runs it all until SIGTERM or SIGINT. It is
//! a crate of its own so the CLI's `--db` mode calls the very operations
//! the API runs, and so the HTTP stack and SQLite build once for both.

pub mod auth;
pub mod db;
pub mod error;
pub mod feed;
pub mod feed_lines;
pub mod http;
pub mod import;
pub mod keygen;
pub mod keys;
pub mod metrics;
pub mod pool;
pub mod record;
pub mod server;
pub mod settings;
pub mod settings_store;
pub mod strict_json;
pub mod usage;

use apikey_core::timestamp::UnixNanos;

/// The wall clock as nanoseconds since the epoch.
pub fn now() -> UnixNanos {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => UnixNanos::try_from(elapsed.as_nanos()).unwrap_or(UnixNanos::MAX),
        Err(before) => UnixNanos::try_from(before.duration().as_nanos())
            .map(|nanos| -nanos)
            .unwrap_or(UnixNanos::MIN),
    }
}
