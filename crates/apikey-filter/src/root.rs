//! The root context: validates each configuration and publishes its keys.
//!
//! Envoy creates a root context per configuration in every worker VM (and
//! once on the main thread to validate it). `on_configure` refuses an
//! invalid configuration by returning `false`, so Envoy keeps the previous
//! filter. A valid one is published into shared data once per process; a
//! worker that finds another worker still writing the same table keeps
//! serving this VM's previous table and polls on its tick until the new one
//! is complete.
//!
//! A configuration is first only hashed, read in pieces: when its table is
//! already complete (the usual case for a worker, as the main thread wrote
//! it), the published settings replace it, and the VM never holds the whole
//! text. Wasm memory never shrinks, so a 160 MB table read whole by every
//! worker would cost 160 MB per worker for the life of the process.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use apikey_core::config::Config;
use apikey_core::decision::Gateway;
use apikey_core::key_table::{self, Digest, Digester, Publication, TableRef};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::host::{self, HostClock, Level, SharedData};
use crate::http::RequestContext;
use crate::metrics;

/// How often a worker waiting for another's table checks on it.
const PENDING_POLL_MS: u32 = 50;

/// How much of the configuration is copied into the VM at a time while
/// hashing it.
const HASH_PIECE_BYTES: usize = 1 << 20;

thread_local! {
    /// The newest gateway this VM has served, for root contexts whose own
    /// table is still being written by another worker.
    static LATEST_READY: RefCell<Option<Rc<Gateway>>> = const { RefCell::new(None) };
    /// Counts configurations seen by this VM, so an outdated root context
    /// stops polling instead of publishing a superseded table.
    static CONFIGURE_SEQUENCE: Cell<u64> = const { Cell::new(0) };
}

enum State {
    /// No configuration, or the empty one: every request gets 503.
    Unconfigured,
    /// Valid, but another worker is still writing its table.
    Pending {
        config: Box<Config>,
        digest: Digest,
        settings: Vec<u8>,
    },
    /// Serving.
    Ready(Rc<Gateway>),
}

/// One configuration's root context.
pub struct ConfigContext {
    state: State,
    sequence: u64,
    /// Whether this root context set a tick period (to poll a pending table).
    ticking: bool,
}

impl ConfigContext {
    /// A root context before `on_configure`.
    pub fn new() -> Self {
        Self {
            state: State::Unconfigured,
            sequence: 0,
            ticking: false,
        }
    }

    /// The gateway requests of this configuration use now.
    fn gateway(&self) -> Option<Rc<Gateway>> {
        match &self.state {
            State::Ready(gateway) => Some(Rc::clone(gateway)),
            State::Pending { .. } => LATEST_READY.with(|latest| latest.borrow().clone()),
            State::Unconfigured => None,
        }
    }

    /// Stops this root context's tick, if it set one. Only a context that
    /// polled has a tick to stop: Envoy keeps a timer entry for every root
    /// context that ever set a period, even 0, and never removes it, so
    /// setting 0 on every configuration grew Envoy's heap with every update
    /// (about 65 bytes per worker; docs/reliability.md).
    fn stop_ticking(&mut self) {
        if self.ticking {
            let _ = host::set_tick_period(0);
            self.ticking = false;
        }
    }

    /// Serves `config`, whose `keys` are in the complete shared `table`.
    fn serve(&mut self, config: Config, table: TableRef, keys: usize) {
        metrics::keys_loaded(keys);
        let gateway = Rc::new(Gateway::new(config, table));
        LATEST_READY.with(|latest| *latest.borrow_mut() = Some(Rc::clone(&gateway)));
        host::log(
            Level::Info,
            &format!(
                "configuration loaded: {keys} keys, table generation {}",
                table.generation
            ),
        );
        self.stop_ticking();
        self.state = State::Ready(gateway);
    }

    /// Publishes (or finds) the table; `false` when the store refused.
    fn publish(&mut self, config: Box<Config>, digest: Digest, settings: Vec<u8>) -> bool {
        match key_table::publish(
            &SharedData,
            &digest,
            &config,
            &settings,
            HostClock::monotonic(),
        ) {
            Ok(publication @ (Publication::Ready(table) | Publication::Written(table))) => {
                if matches!(publication, Publication::Written(_)) {
                    metrics::config_accepted();
                }
                let keys = config.keys.len();
                self.serve(*config, table, keys);
                true
            }
            Ok(Publication::Pending) => {
                self.state = State::Pending {
                    config,
                    digest,
                    settings,
                };
                self.ticking = true;
                if host::set_tick_period(PENDING_POLL_MS).is_err() {
                    host::log(
                        Level::Warn,
                        "cannot set a tick; the pending table will not be polled",
                    );
                }
                true
            }
            Err(error) => {
                host::log(
                    Level::Critical,
                    &format!("configuration refused: key table not published: {error:?}"),
                );
                false
            }
        }
    }
}

impl Default for ConfigContext {
    fn default() -> Self {
        Self::new()
    }
}

impl Context for ConfigContext {}

impl RootContext for ConfigContext {
    fn on_configure(&mut self, configuration_size: usize) -> bool {
        metrics::define_all();
        self.sequence = CONFIGURE_SEQUENCE.with(|sequence| {
            let next = sequence.get().saturating_add(1);
            sequence.set(next);
            next
        });
        let (digest, hashed) = match configuration_digest(configuration_size) {
            Ok(hashed) => hashed,
            Err(error) => return refuse_unreadable(error),
        };
        if let Ok(Some(ready)) = key_table::ready_table(&SharedData, &digest) {
            // Another context wrote these exact bytes' table: its settings
            // are the rest of the configuration.
            if let Ok(Some(config)) = Config::parse(&ready.settings) {
                self.serve(config, ready.table, ready.key_count);
                return true;
            }
        }
        let bytes = match host::plugin_configuration() {
            Ok(bytes) => bytes,
            Err(error) => return refuse_unreadable(error),
        };
        if bytes.len() != hashed {
            host::log(
                Level::Critical,
                &format!(
                    "configuration refused: {} bytes read, {hashed} hashed",
                    bytes.len()
                ),
            );
            return false;
        }
        match Config::parse_with_settings(&bytes) {
            Err(error) => {
                host::log(Level::Critical, &format!("configuration refused: {error}"));
                metrics::config_refused(&digest);
                false
            }
            Ok(None) => {
                host::log(
                    Level::Info,
                    "empty configuration: answering 503 not_configured",
                );
                self.state = State::Unconfigured;
                true
            }
            Ok(Some((config, settings))) => {
                drop(bytes);
                self.publish(Box::new(config), digest, settings)
            }
        }
    }

    fn on_tick(&mut self) {
        let superseded = CONFIGURE_SEQUENCE.with(Cell::get) != self.sequence;
        match std::mem::replace(&mut self.state, State::Unconfigured) {
            State::Pending { .. } if superseded => self.stop_ticking(),
            State::Pending {
                config,
                digest,
                settings,
            } => {
                // A store error here leaves the previous table serving; the
                // next tick tries again.
                if !self.publish(config, digest, settings) {
                    host::log(Level::Warn, "pending table still not published; retrying");
                }
            }
            other => {
                self.state = other;
                self.stop_ticking();
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestContext::new(self.gateway())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The digest of the plugin configuration of `size` bytes, and how many
/// bytes it covers, read a piece at a time.
fn configuration_digest(size: usize) -> Result<(Digest, usize), host::HostError> {
    let mut digester = Digester::default();
    let mut start = 0;
    while start < size {
        let piece = host::plugin_configuration_piece(start, HASH_PIECE_BYTES.min(size - start))?;
        if piece.is_empty() {
            break;
        }
        digester.update(&piece);
        start += piece.len();
    }
    Ok((digester.finish(), start))
}

/// Refuses a configuration the host would not hand over.
fn refuse_unreadable(error: host::HostError) -> bool {
    host::log(
        Level::Critical,
        &format!("configuration refused: unreadable ({error:?})"),
    );
    false
}
