//! The root context: validates each configuration and publishes its keys.
//!
//! Envoy creates a root context per configuration in every worker VM (and
//! once on the main thread to validate it). `on_configure` refuses an
//! invalid configuration by returning `false`, so Envoy keeps the previous
//! filter. A valid one is published into shared data once per process; a
//! worker that finds another worker still writing the same table keeps
//! serving this VM's previous table and polls on its tick until the new one
//! is complete.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use apikey_core::config::Config;
use apikey_core::decision::Gateway;
use apikey_core::key_hash::KeyHash;
use apikey_core::key_table::{self, Digest, Publication, TableRef};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::host::{self, HostClock, Level, SharedData};
use crate::http::RequestContext;
use crate::metrics;

/// How often a worker waiting for another's table checks on it.
const PENDING_POLL_MS: u32 = 50;

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
    Pending { config: Box<Config>, digest: Digest },
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
    fn publish(&mut self, config: Box<Config>, digest: Digest) -> bool {
        match key_table::publish(&SharedData, &digest, &config, HostClock::monotonic()) {
            Ok(publication @ (Publication::Ready(table) | Publication::Written(table))) => {
                if matches!(publication, Publication::Written(_)) {
                    metrics::config_accepted();
                }
                let keys = config.keys.len();
                self.serve(*config, table, keys);
                true
            }
            Ok(Publication::Pending) => {
                self.state = State::Pending { config, digest };
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
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        metrics::define_all();
        self.sequence = CONFIGURE_SEQUENCE.with(|sequence| {
            let next = sequence.get().saturating_add(1);
            sequence.set(next);
            next
        });
        let bytes = match host::plugin_configuration() {
            Ok(bytes) => bytes,
            Err(error) => {
                host::log(
                    Level::Critical,
                    &format!("configuration refused: unreadable ({error:?})"),
                );
                return false;
            }
        };
        let digest = *KeyHash::of(&bytes).as_bytes();
        if let Ok(Some(table)) = key_table::ready_table(&SharedData, &digest) {
            // Another worker wrote these exact bytes' table: read the rest.
            if let Ok(Some((config, keys))) = Config::parse_published(&bytes) {
                self.serve(config, table, keys);
                return true;
            }
        }
        match Config::parse(&bytes) {
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
            Ok(Some(config)) => self.publish(Box::new(config), digest),
        }
    }

    fn on_tick(&mut self) {
        let superseded = CONFIGURE_SEQUENCE.with(Cell::get) != self.sequence;
        match std::mem::replace(&mut self.state, State::Unconfigured) {
            State::Pending { .. } if superseded => self.stop_ticking(),
            State::Pending { config, digest } => {
                // A store error here leaves the previous table serving; the
                // next tick tries again.
                if !self.publish(config, digest) {
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
