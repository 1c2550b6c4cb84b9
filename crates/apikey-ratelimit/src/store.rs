//! The counters, in Redis: one Lua script charges a window's counter and
//! reads its time to live in a single atomic step.
//!
//! Redis runs a script to completion before any other command, so the
//! increment and the count it returns cannot interleave with another
//! server's: with any number of servers on one Redis, the requests of one
//! window receive the counts 1, 2, 3, … each exactly once, and exactly
//! `requests_per_unit` of them are at or under the limit. The expiry is
//! set by the charge that finds the counter without one (the first of its
//! window), so a counter never outlives its window and never lives
//! forever.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use crate::decision::{Charge, Counted};

/// `KEYS[1]` the window's counter, `ARGV[1]` the charge, `ARGV[2]` the
/// expiry in ms for a counter that has none. Returns `{count, pttl}`.
pub const CHARGE_SCRIPT: &str = r"
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {count, ttl}
";

/// Redis failed or did not answer in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where counters are charged: Redis in the server, a map in tests.
pub trait Counters: Send + Sync + 'static {
    /// Adds `charge.hits` to `charge.key` and returns the new count and
    /// its time to live, in one atomic step.
    fn charge(&self, charge: &Charge) -> impl Future<Output = Result<Counted, StoreError>> + Send;

    /// Whether the store answers (for `/healthz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The Redis store: one multiplexed connection, reconnected after I/O
/// errors, every command bounded by a timeout.
pub struct Redis {
    connection: ConnectionManager,
    script: Script,
    timeout: Duration,
}

impl Redis {
    /// A store for `url` (`redis://host:port/db`, `rediss://…`,
    /// `redis+unix:///path`). It connects on first use, so the server can
    /// start before Redis; until Redis answers, every call fails.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError(format!("Redis address: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError(format!("Redis connection: {e}")))?;
        Ok(Self {
            connection,
            script: Script::new(CHARGE_SCRIPT),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError(error.to_string())),
            Err(_) => Err(StoreError(format!(
                "no answer from Redis within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

impl Counters for Redis {
    async fn charge(&self, charge: &Charge) -> Result<Counted, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(&charge.key);
        invocation.arg(charge.hits).arg(charge.ttl_ms);
        let (count, ttl_ms): (u64, i64) = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(Counted {
            count,
            // The script never returns a negative TTL; clamp all the same.
            ttl_ms: u64::try_from(ttl_ms).unwrap_or(charge.ttl_ms).max(1),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(())
    }
}
