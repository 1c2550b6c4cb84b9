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
//!
//! Several filters may share this VM (one `vm_id`, two listeners or routes).
//! Each root context belongs to a [`Lineage`], its plugin's `name` and
//! `root_id`, which stay the same across that filter's updates: its tables
//! and buckets in shared data, the gateway a pending context serves
//! meanwhile and the count that tells an outdated context to stop polling
//! are all kept per lineage, so one filter's update never changes what
//! another answers (contract §7.1).

use std::cell::RefCell;
use std::rc::Rc;

use apikey_core::config::Config;
use apikey_core::decision::Gateway;
use apikey_core::key_table::{self, Digest, Digester, Lineage, Publication, TableRef};
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

/// What this VM keeps for one lineage across its root contexts.
struct LineageSlot {
    lineage: Lineage,
    /// The newest gateway this VM has served for the lineage, for its root
    /// contexts whose own table is still being written by another worker.
    latest_ready: Option<Rc<Gateway>>,
    /// Counts the lineage's configurations seen by this VM, so an outdated
    /// root context stops polling instead of publishing a superseded table.
    sequence: u64,
}

thread_local! {
    /// One slot per lineage this VM has configured: as many as filters
    /// share the `vm_id`. A slot holds one gateway (its rules and its
    /// bounded key cache) until the lineage's next configuration replaces
    /// it; a filter removed from Envoy leaves its last one here.
    static LINEAGES: RefCell<Vec<LineageSlot>> = const { RefCell::new(Vec::new()) };
}

/// Runs `use_slot` on `lineage`'s slot, made on first use.
fn with_slot<T>(lineage: Lineage, use_slot: impl FnOnce(&mut LineageSlot) -> T) -> T {
    LINEAGES.with(|slots| {
        let mut slots = slots.borrow_mut();
        if let Some(slot) = slots.iter_mut().find(|slot| slot.lineage == lineage) {
            return use_slot(slot);
        }
        let mut slot = LineageSlot {
            lineage,
            latest_ready: None,
            sequence: 0,
        };
        let result = use_slot(&mut slot);
        slots.push(slot);
        result
    })
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
    /// The filter this context configures, read once in `on_configure`.
    lineage: Option<Lineage>,
    sequence: u64,
    /// Whether this root context set a tick period (to poll a pending table).
    ticking: bool,
}

impl ConfigContext {
    /// A root context before `on_configure`.
    pub fn new() -> Self {
        Self {
            state: State::Unconfigured,
            lineage: None,
            sequence: 0,
            ticking: false,
        }
    }

    /// The gateway requests of this configuration use now.
    fn gateway(&self) -> Option<Rc<Gateway>> {
        match &self.state {
            State::Ready(gateway) => Some(Rc::clone(gateway)),
            // Never another filter's gateway: only this lineage's.
            State::Pending { .. } => self
                .lineage
                .and_then(|lineage| with_slot(lineage, |slot| slot.latest_ready.clone())),
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
        with_slot(table.lineage, |slot| {
            slot.latest_ready = Some(Rc::clone(&gateway));
        });
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
    fn publish(
        &mut self,
        lineage: Lineage,
        config: Box<Config>,
        digest: Digest,
        settings: Vec<u8>,
    ) -> bool {
        match key_table::publish(
            &SharedData,
            &lineage,
            &digest,
            &config,
            &settings,
            &HostClock::monotonic,
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
        let lineage = *self.lineage.get_or_insert_with(plugin_lineage);
        self.sequence = with_slot(lineage, |slot| {
            slot.sequence = slot.sequence.saturating_add(1);
            slot.sequence
        });
        let (digest, hashed) = match configuration_digest(configuration_size) {
            Ok(hashed) => hashed,
            Err(error) => return refuse_unreadable(error),
        };
        if let Ok(Some(ready)) = key_table::ready_table(&SharedData, &lineage, &digest) {
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
                metrics::config_refused(&lineage, &digest);
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
                self.publish(lineage, Box::new(config), digest, settings)
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(lineage) = self.lineage else {
            self.stop_ticking();
            return;
        };
        let superseded = with_slot(lineage, |slot| slot.sequence) != self.sequence;
        match std::mem::replace(&mut self.state, State::Unconfigured) {
            State::Pending { .. } if superseded => self.stop_ticking(),
            State::Pending {
                config,
                digest,
                settings,
            } => {
                // A store error here leaves the previous table serving; the
                // next tick tries again. A claim whose writer died is taken
                // over here once it goes unrenewed (key_table).
                if !self.publish(lineage, config, digest, settings) {
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

/// This root context's lineage: its plugin's `name` and `root_id`, which
/// Envoy keeps across the filter's updates and which tell apart filters
/// sharing a `vm_id`. A host that does not say (none of Envoy's) gets one
/// lineage for all its filters, as before lineages existed, and a warning.
fn plugin_lineage() -> Lineage {
    let read = |name: &str| match host::property(name.as_bytes()) {
        Ok(Some(value)) => value,
        other => {
            host::log(
                Level::Warn,
                &format!(
                    "property {name} unavailable ({:?}): filters sharing this vm_id share one key table",
                    other.err()
                ),
            );
            Vec::new()
        }
    };
    let name = read("plugin_name");
    let root_id = read("plugin_root_id");
    let lineage = Lineage::of(&name, &root_id);
    host::log(
        Level::Info,
        &format!(
            "plugin {:?} (root_id {:?}): shared-data entries under {}",
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(&root_id),
            lineage.key("")
        ),
    );
    lineage
}

/// Refuses a configuration the host would not hand over.
fn refuse_unreadable(error: host::HostError) -> bool {
    host::log(
        Level::Critical,
        &format!("configuration refused: unreadable ({error:?})"),
    );
    false
}
