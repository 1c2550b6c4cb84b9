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
//!
//! The password, when there is one, comes from a file (see [`crate::password`])
//! and is set on the client's connection settings, which sends `AUTH` on
//! every (re)connection; a password written into the URL is refused, since
//! the URL is a flag and flags show in `ps`.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, Script};

use crate::decision::{Charge, Counted};
use crate::password::Password;

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
    /// A store for `url` (`redis://[user@]host:port/db`,
    /// `redis+unix:///path`), authenticating with `password` when given.
    /// It connects on first use, so the server can start before Redis;
    /// until Redis answers (and accepts the password), every call fails.
    pub fn new(
        url: &str,
        password: Option<&Password>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = Client::open(connection_info(url, password)?)
            .map_err(|e| StoreError(format!("Redis address: {e}")))?;
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

/// Where and how to connect: `url`'s address, database and user name,
/// with `password`. A URL that carries a password itself is refused (its
/// error never repeats the URL).
pub fn connection_info(
    url: &str,
    password: Option<&Password>,
) -> Result<ConnectionInfo, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError(format!("Redis address: {e}")))?;
    if info.redis_settings().password().is_some() {
        return Err(StoreError(
            "the Redis URL carries a password: put it in a file and give \
             --redis-password-file instead (a command line shows in `ps`)"
                .to_owned(),
        ));
    }
    Ok(match password {
        Some(password) => {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info.set_redis_settings(settings)
        }
        None => info,
    })
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const SECRET: &str = "pw-4f1d9c-never-printed";

    fn password() -> Password {
        let dir = std::env::temp_dir().join(format!(
            "apikey-ratelimit-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("redis-password");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let password = crate::password::read_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        password
    }

    #[test]
    fn the_files_password_is_set_and_the_urls_user_and_database_kept() {
        let info = connection_info("redis://fleet@redis:6380/2", Some(&password())).unwrap();
        let settings = info.redis_settings();
        assert_eq!(
            settings.password(),
            Some(SECRET),
            "the password was not set"
        );
        assert_eq!(
            settings.username(),
            Some("fleet"),
            "the URL's user was lost"
        );
        assert_eq!(settings.db(), 2, "the URL's database was lost");
        assert_eq!(info.addr().to_string(), "redis:6380");
        assert!(
            !format!("{info:?}").contains(SECRET),
            "the client's Debug prints the password"
        );
    }

    #[test]
    fn without_a_password_none_is_sent() {
        let info = connection_info("redis://127.0.0.1:6379", None).unwrap();
        assert_eq!(info.redis_settings().password(), None);
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        for url in [
            format!("redis://:{SECRET}@redis:6379"),
            format!("redis://fleet:{SECRET}@redis:6379"),
        ] {
            for given in [None, Some(password())] {
                let StoreError(message) = connection_info(&url, given.as_ref())
                    .expect_err("a URL with a password was accepted");
                assert!(
                    message.contains("--redis-password-file"),
                    "the refusal does not say what to do: {message}"
                );
                assert!(
                    !message.contains(SECRET),
                    "the refusal repeats it: {message}"
                );
            }
        }
    }

    /// A Redis that refuses every password: it records what the client
    /// sent, answers WRONGPASS and hangs up.
    async fn refusing_redis() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = vec![0; 4096];
            let n = stream.read(&mut received).await.unwrap();
            received.truncate(n);
            let _ = stream
                .write_all(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                .await;
            received
        });
        (port, task)
    }

    #[tokio::test]
    async fn the_password_is_sent_with_auth_and_never_in_an_error() {
        let (port, server) = refusing_redis().await;
        let store = Redis::new(
            &format!("redis://127.0.0.1:{port}"),
            Some(&password()),
            Duration::from_millis(500),
        )
        .unwrap();
        let StoreError(message) = store.ping().await.expect_err("a refused password answered");
        let received = String::from_utf8_lossy(&server.await.unwrap()).into_owned();
        assert!(
            received.contains("AUTH") && received.contains(SECRET),
            "the client did not send AUTH with the password: {received:?}"
        );
        assert!(
            !message.contains(SECRET),
            "the error shows the password: {message}"
        );
    }

    #[tokio::test]
    async fn a_store_that_cannot_connect_does_not_show_its_password() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let store = Redis::new(
            &format!("redis://127.0.0.1:{port}"),
            Some(&password()),
            Duration::from_millis(200),
        )
        .unwrap();
        let StoreError(message) = store.ping().await.expect_err("nothing listens there");
        assert!(
            !message.contains(SECRET),
            "the error shows the password: {message}"
        );
    }
}
