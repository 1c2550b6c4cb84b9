//! A configuration with `key_source` in one VM: follow the key service
//! when this VM holds the process's lease, and in every VM serve the
//! shared table the head names.
//!
//! Every VM ticks (every [`FOLLOW_TICK_MS`]): it renews or looks at the
//! lease ([`lease`]), lets its feed client make its next call when it
//! holds it, and reads the head. A head that moved gives the VM a new
//! gateway, with an empty key cache, so no worker serves a record older
//! than a tick after the change was written; settings are read again only
//! when their version moved.

use std::rc::Rc;

use crate::config::Config;
use crate::decision::Gateway;
use crate::host::{Host, LogLevel};
use crate::key_source::{with_gateway_fleet, FeedClient, KeySource, Update};
use crate::live_table::lease::{self, Lease};
use crate::live_table::{self, LiveHead};
use crate::metrics::Metric;
use crate::store::names::Lineage;
use crate::store::StoreError;

/// How often every VM looks at the lease and the head.
pub const FOLLOW_TICK_MS: u32 = crate::key_source::FOLLOW_TICK_MS;

/// One configuration's following of the key service in one VM.
pub(super) struct Follower {
    client: FeedClient,
    lineage: Lineage,
    /// This VM's name in the lease.
    holder: u64,
    /// Whether this VM held the lease at its last look (and fetches).
    fetching: bool,
    /// The build this VM's client wrote: its changes apply to that table
    /// only.
    written_build: Option<u64>,
    /// The head served and its settings.
    serving: Option<(LiveHead, Config)>,
}

impl Follower {
    pub(super) fn new(source: KeySource, lineage: Lineage, holder: u64) -> Self {
        Self {
            client: FeedClient::new(source),
            lineage,
            holder,
            fetching: false,
            written_build: None,
            serving: None,
        }
    }

    /// Looks at the lease and the head; a new gateway when the table
    /// served moved.
    pub(super) fn tick<H: Host>(&mut self, host: &mut H) -> Option<Rc<Gateway>> {
        let now = host.monotonic_ns();
        match lease::hold(host.store(), &self.lineage, self.holder, now) {
            Ok(Lease::Confirmed) => {
                if !self.fetching {
                    self.fetching = true;
                    host.log(
                        LogLevel::Info,
                        "key_source: this VM follows the key service for the process",
                    );
                }
                self.client.tick(host);
            }
            Ok(Lease::Taken) => {}
            Ok(Lease::Elsewhere) => self.stop_fetching(host),
            Err(error) => host.log(
                LogLevel::Warn,
                &format!("key_source: the lease cannot be read ({error:?}); retrying"),
            ),
        }
        self.watch(host)
    }

    /// Another VM follows now: drop this one's feed state and calls.
    fn stop_fetching<H: Host>(&mut self, host: &mut H) {
        if self.fetching {
            self.fetching = false;
            self.written_build = None;
            self.client = FeedClient::new(self.client.source().clone());
            host.log(
                LogLevel::Info,
                "key_source: another VM follows the key service now",
            );
        }
    }

    /// The answer to a feed call: what it brought written to the shared
    /// table (by the lease holder only), then the next call.
    pub(super) fn on_answer<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        body_size: usize,
    ) -> Option<Rc<Gateway>> {
        if !self.fetching {
            return None;
        }
        // Renewed before the answer is worked on (a page can take a while).
        let now = host.monotonic_ns();
        if !lease::renew(host.store(), &self.lineage, self.holder, now).unwrap_or(false) {
            self.stop_fetching(host);
            return None;
        }
        if let Some(update) = self.client.on_answer(host, token, body_size) {
            match self.write(host, &update) {
                Ok(true) => host.increment(Metric::KeySourceTables, 1),
                Ok(false) => {}
                Err(error) => {
                    host.increment(Metric::KeySourceFailures, 1);
                    host.log(
                        LogLevel::Critical,
                        &format!(
                            "key_source: the table cannot be written to shared data ({error:?}); taking a new snapshot, the last table stays served"
                        ),
                    );
                    self.client.restart();
                }
            }
        }
        self.client.tick(host);
        self.watch(host)
    }

    /// Writes `update`; `Ok(false)` when it was not written (the lease was
    /// lost, or changes met a table this client did not write).
    fn write<H: Host>(&mut self, host: &mut H, update: &Update) -> Result<bool, StoreError> {
        let (lineage, holder) = (self.lineage, self.holder);
        let reader: &H = host;
        // Renewed as the write goes: a long write is not a dead writer.
        let still_writer = || lease::renew(reader.store(), &lineage, holder, reader.monotonic_ns());
        if !still_writer()? {
            self.stop_fetching(host);
            return Ok(false);
        }
        match update {
            Update::Table(table) => {
                let started = reader.monotonic_ns();
                let published = live_table::publish_table(
                    reader.store(),
                    &lineage,
                    table,
                    started,
                    &still_writer,
                )?;
                let Some(head) = published else {
                    self.stop_fetching(host);
                    return Ok(false);
                };
                let written_ms = host.monotonic_ns().saturating_sub(started) / 1_000_000;
                self.written_build = Some(head.build);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "key_source: table of generation {} written: {} keys in {} shards ({} ms to write; {} ms since the snapshot began)",
                        head.generation,
                        head.key_count,
                        1u64 << head.bits,
                        written_ms,
                        host.monotonic_ns().saturating_sub(table.began_ns) / 1_000_000,
                    ),
                );
                Ok(true)
            }
            Update::Changes(changes) => {
                let head = live_table::read_head(host.store(), &lineage)?;
                match head.filter(|head| Some(head.build) == self.written_build) {
                    Some(head) => {
                        live_table::apply_changes(host.store(), &lineage, &head, changes)?;
                        Ok(true)
                    }
                    None => {
                        host.log(
                            LogLevel::Warn,
                            "key_source: the shared table is not the one this VM wrote; taking a new snapshot",
                        );
                        self.client.restart();
                        Ok(false)
                    }
                }
            }
        }
    }

    /// A gateway for the head, when it moved since the last look.
    pub(super) fn watch<H: Host>(&mut self, host: &mut H) -> Option<Rc<Gateway>> {
        let head = match live_table::read_head(host.store(), &self.lineage) {
            Ok(head) => head?,
            Err(error) => {
                host.log(
                    LogLevel::Warn,
                    &format!("key_source: the table head cannot be read ({error:?})"),
                );
                return None;
            }
        };
        let same_settings = match &self.serving {
            Some((serving, _)) if *serving == head => return None,
            Some((serving, config))
                if serving.build == head.build
                    && serving.settings_version == head.settings_version =>
            {
                Some(config.clone())
            }
            _ => None,
        };
        let config = match same_settings {
            Some(config) => config,
            None => {
                let text = live_table::read_settings(host.store(), &self.lineage, &head).ok()??;
                let fleet = self.client.source().fleet.as_ref();
                let parsed = match Config::parse(&text) {
                    Ok(Some(config)) => with_gateway_fleet(config, fleet),
                    Ok(None) => Err("empty".to_owned()),
                    Err(error) => Err(error.to_string()),
                };
                match parsed {
                    Ok(config) => config,
                    Err(error) => {
                        host.log(
                            LogLevel::Critical,
                            &format!(
                                "key_source: the shared settings cannot be read ({error}); the last table stays served"
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        if self
            .serving
            .as_ref()
            .is_none_or(|(serving, _)| serving.build != head.build)
        {
            host.log(
                LogLevel::Info,
                &format!(
                    "key_source: serving the table of generation {} ({} keys)",
                    head.generation, head.key_count
                ),
            );
        }
        host.record(Metric::KeysLoaded, head.key_count);
        let gateway = Rc::new(Gateway::new(config.clone(), head.table(self.lineage)));
        self.serving = Some((head, config));
        Some(gateway)
    }
}
