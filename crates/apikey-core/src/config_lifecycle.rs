//! One configuration's life in one VM: configure, wait for its table,
//! serve; over the [`Host`] port.
//!
//! Envoy creates a root context per configuration in every worker VM (and
//! once on the main thread to validate it) and calls `on_configure`; a
//! [`Configuration`] is that context's state. Refusing an invalid
//! configuration (returning `false`) makes Envoy keep the previous filter.
//! A valid one is published into shared data once per process; a worker
//! that finds another worker still writing the same table keeps serving
//! this VM's previous table for the filter and polls on its tick until the
//! new one is complete:
//!
//! ```text
//! Unconfigured ── configure ──┬─ table ready / written ──► Ready (serving)
//!                             ├─ another worker writing ──► Pending ── tick ──┐
//!                             ├─ empty ─────────────────► Unconfigured        │
//!                             └─ invalid ───────────────► refused             │
//!            Pending ◄── still being written ── tick ◄───────────────────────┘
//!            Pending ── superseded by a newer configuration ── tick ──► stops polling
//! ```
//!
//! A configuration is first only hashed, read in pieces: when its table is
//! already complete (the usual case for a worker, as the main thread wrote
//! it), the published settings replace it, and the VM never holds the whole
//! text. Wasm memory never shrinks, so a 160 MB table read whole by every
//! worker would cost 160 MB per worker for the life of the process.
//!
//! Several filters may share a VM (one `vm_id`, two listeners or routes).
//! Each configuration belongs to a [`Lineage`], its plugin's `name` and
//! `root_id`, which stay the same across that filter's updates. What a VM
//! keeps across its root contexts, per lineage, is a [`VmState`] the edge
//! owns and passes in: the gateway a pending configuration serves meanwhile
//! and the count that tells an outdated one to stop polling. So one
//! filter's update never changes what another answers (contract §7.1).

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::Config;
use crate::decision::Gateway;
use crate::host::{Host, HostError, LogLevel, Property};
use crate::key_source::KeySource;
use crate::key_table::{self, Digest, Digester, Lineage, Publication, TableRef};
use crate::metrics::Metric;
use crate::refusal;
use crate::usage::{UsageLog, UsageReporter};

/// How often a worker waiting for another's table checks on it.
pub const PENDING_POLL_MS: u32 = 50;

/// How much of the configuration is copied into the VM at a time while
/// hashing it.
pub const HASH_PIECE_BYTES: usize = 1 << 20;

/// What a VM keeps for one lineage across its root contexts.
struct LineageSlot {
    lineage: Lineage,
    /// The newest gateway this VM has served for the lineage, for its
    /// configurations whose own table is still being written by another
    /// worker.
    latest_ready: Option<Rc<Gateway>>,
    /// Counts the lineage's configurations seen by this VM, so an outdated
    /// one stops polling instead of publishing a superseded table.
    sequence: u64,
}

/// What one VM keeps across its configurations: one slot per lineage it
/// has configured, as many as filters share the `vm_id`. A slot holds one
/// gateway (its rules and its bounded key cache) until the lineage's next
/// configuration replaces it; a filter removed from Envoy leaves its last
/// one here.
#[derive(Default)]
pub struct VmState {
    slots: Vec<LineageSlot>,
    /// This VM's name in a `key_source` lease, drawn on first use.
    holder: Option<u64>,
}

impl VmState {
    /// A VM that has configured nothing yet.
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            holder: None,
        }
    }

    /// This VM's name among the VMs of the process: random (from the
    /// host's entropy, through the standard library's hasher seeds), so
    /// VMs configured in the same nanosecond still differ.
    fn holder(&mut self, now_ns: u64) -> u64 {
        *self.holder.get_or_insert_with(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(now_ns)
        })
    }

    /// Runs `use_slot` on `lineage`'s slot, made on first use.
    fn with_slot<T>(
        &mut self,
        lineage: Lineage,
        use_slot: impl FnOnce(&mut LineageSlot) -> T,
    ) -> T {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.lineage == lineage) {
            return use_slot(slot);
        }
        let mut slot = LineageSlot {
            lineage,
            latest_ready: None,
            sequence: 0,
        };
        let result = use_slot(&mut slot);
        self.slots.push(slot);
        result
    }

    fn find(&self, lineage: Lineage) -> Option<&LineageSlot> {
        self.slots.iter().find(|slot| slot.lineage == lineage)
    }
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

/// One configuration's state (one root context).
pub struct Configuration {
    state: State,
    /// The filter this configuration belongs to, read once in `configure`.
    lineage: Option<Lineage>,
    /// This configuration's place in its lineage's sequence in this VM.
    sequence: u64,
    /// Whether this configuration set a tick period (to poll a pending
    /// table).
    ticking: bool,
    /// With `key_source`: following the key service's table.
    follower: Option<Follower>,
    /// With `key_source`: this VM's usage reports to the key service
    /// (contract §8.4), beside the follower.
    usage: Option<UsageReporter>,
}

impl Default for Configuration {
    fn default() -> Self {
        Self::new()
    }
}

impl Configuration {
    /// A root context before `on_configure`.
    pub fn new() -> Self {
        Self {
            state: State::Unconfigured,
            lineage: None,
            sequence: 0,
            ticking: false,
            follower: None,
            usage: None,
        }
    }

    /// Where this configuration's requests count key uses (`key_source`
    /// only: an ECDS table has no service to report to).
    pub fn usage_log(&self) -> Option<Rc<RefCell<UsageLog>>> {
        self.usage.as_ref().map(UsageReporter::log)
    }

    /// Whether this configuration waits for another worker's table.
    pub fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending { .. })
    }

    /// The gateway requests of this configuration use now: its own, or
    /// while its table is pending the newest its lineage served in this VM
    /// (never another filter's); `None` answers 503 `not_configured`.
    pub fn gateway(&self, vm: &VmState) -> Option<Rc<Gateway>> {
        match &self.state {
            State::Ready(gateway) => Some(Rc::clone(gateway)),
            State::Pending { .. } => self
                .lineage
                .and_then(|lineage| vm.find(lineage))
                .and_then(|slot| slot.latest_ready.clone()),
            // A follower before its first table serves what its lineage
            // served in this VM (an update of `key_source`), else 503.
            State::Unconfigured if self.follower.is_some() => self
                .lineage
                .and_then(|lineage| vm.find(lineage))
                .and_then(|slot| slot.latest_ready.clone()),
            State::Unconfigured => None,
        }
    }

    /// Loads the plugin configuration of `configuration_size` bytes;
    /// `false` refuses it (Envoy then keeps the previous filter).
    pub fn configure<H: Host>(
        &mut self,
        host: &mut H,
        vm: &mut VmState,
        configuration_size: usize,
    ) -> bool {
        let lineage = match self.lineage {
            Some(lineage) => lineage,
            None => {
                let lineage = plugin_lineage(host);
                self.lineage = Some(lineage);
                lineage
            }
        };
        self.sequence = vm.with_slot(lineage, |slot| {
            slot.sequence = slot.sequence.saturating_add(1);
            slot.sequence
        });
        let (digest, hashed) = match configuration_digest(host, configuration_size) {
            Ok(hashed) => hashed,
            Err(error) => return refuse_unreadable(host, error),
        };
        if let Ok(Some(ready)) = key_table::ready_table(host.store(), &lineage, &digest) {
            // Another context wrote these exact bytes' table: its settings
            // are the rest of the configuration.
            if let Ok(Some(config)) = Config::parse(&ready.settings) {
                self.serve(host, vm, config, ready.table, ready.key_count);
                return true;
            }
        }
        let bytes = match host.plugin_configuration(0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(error) => return refuse_unreadable(host, error),
        };
        if bytes.len() != hashed {
            host.log(
                LogLevel::Critical,
                &format!(
                    "configuration refused: {} bytes read, {hashed} hashed",
                    bytes.len()
                ),
            );
            return false;
        }
        match Config::parse_with_settings(&bytes) {
            Err(error) => {
                host.log(
                    LogLevel::Critical,
                    &format!("configuration refused: {error}"),
                );
                // Every VM refuses the same bad configuration: the first to
                // record it counts it (when shared data fails, it is counted).
                if refusal::first_to_refuse(host.store(), &lineage, &digest).unwrap_or(true) {
                    host.increment(Metric::ConfigRefused, 1);
                }
                false
            }
            Ok(None) => {
                host.log(
                    LogLevel::Info,
                    "empty configuration: answering 503 not_configured",
                );
                self.state = State::Unconfigured;
                true
            }
            Ok(Some((config, _))) if config.key_source.is_some() => {
                if let Some(source) = config.key_source {
                    self.follow(host, vm, lineage, source);
                }
                true
            }
            Ok(Some((config, settings))) => {
                drop(bytes);
                self.publish(host, vm, lineage, Box::new(config), digest, settings)
            }
        }
    }

    /// Polls a pending table: serves it once complete, takes over a claim
    /// whose writer died, or stops when a newer configuration of the same
    /// lineage came meanwhile.
    pub fn tick<H: Host>(&mut self, host: &mut H, vm: &mut VmState) {
        let Some(lineage) = self.lineage else {
            self.stop_ticking(host);
            return;
        };
        let superseded = vm.find(lineage).map(|slot| slot.sequence) != Some(self.sequence);
        if let Some(usage) = self.usage.as_mut() {
            // A replaced configuration hands in its last counts at once.
            if superseded {
                usage.flush(host);
            } else {
                usage.tick(host);
            }
        }
        if self.follower.is_some() {
            self.follow_tick(host, vm, superseded);
            return;
        }
        match std::mem::replace(&mut self.state, State::Unconfigured) {
            State::Pending { .. } if superseded => self.stop_ticking(host),
            State::Pending {
                config,
                digest,
                settings,
            } => {
                // A store error here leaves the previous table serving; the
                // next tick tries again. A claim whose writer died is taken
                // over here once it goes unrenewed (key_table).
                if !self.publish(host, vm, lineage, config, digest, settings) {
                    host.log(
                        LogLevel::Warn,
                        "pending table still not published; retrying",
                    );
                }
            }
            other => {
                self.state = other;
                self.stop_ticking(host);
            }
        }
    }

    /// Starts following the key service named by `source`: a tick to
    /// look at the lease and the table, and a first look at the table at
    /// once (a VM configured after it was written serves it straight away).
    fn follow<H: Host>(
        &mut self,
        host: &mut H,
        vm: &mut VmState,
        lineage: Lineage,
        source: KeySource,
    ) {
        host.log(
            LogLevel::Info,
            &format!(
                "key_source: following the key service through cluster {:?} (authority {:?})",
                source.cluster, source.authority
            ),
        );
        self.usage = Some(UsageReporter::new(&source, host));
        let holder = vm.holder(host.monotonic_ns());
        self.follower = Some(Follower::new(source, lineage, holder));
        self.state = State::Unconfigured;
        self.ticking = true;
        if host.set_tick_period(FOLLOW_TICK_MS).is_err() {
            host.log(
                LogLevel::Warn,
                "key_source: cannot set a tick; the key service will not be followed",
            );
        }
        // Only a look at the table here: the lease is taken on a tick, by a
        // context that ticks (Envoy validates a configuration in a context
        // it then drops, whose lease would hold others off for a second).
        let gateway = self
            .follower
            .as_mut()
            .and_then(|follower| follower.watch(host));
        if let Some(gateway) = gateway {
            self.serve_followed(vm, gateway);
        }
    }

    /// A follower's tick: stop when superseded, else look at the lease and
    /// the table.
    fn follow_tick<H: Host>(&mut self, host: &mut H, vm: &mut VmState, superseded: bool) {
        if superseded {
            self.follower = None;
            self.stop_ticking(host);
            return;
        }
        let gateway = self
            .follower
            .as_mut()
            .and_then(|follower| follower.tick(host));
        if let Some(gateway) = gateway {
            self.serve_followed(vm, gateway);
        }
    }

    /// The answer to a feed request of this configuration's follower
    /// (`token`, with a body of `body_size` bytes).
    pub fn on_http_answer<H: Host>(
        &mut self,
        host: &mut H,
        vm: &mut VmState,
        token: u32,
        body_size: usize,
    ) {
        if let Some(usage) = self.usage.as_mut() {
            if usage.on_answer(host, token) {
                return;
            }
        }
        let gateway = self
            .follower
            .as_mut()
            .and_then(|follower| follower.on_answer(host, token, body_size));
        if let Some(gateway) = gateway {
            self.serve_followed(vm, gateway);
        }
    }

    /// Serves a followed table's new gateway.
    fn serve_followed(&mut self, vm: &mut VmState, gateway: Rc<Gateway>) {
        vm.with_slot(gateway.table().lineage, |slot| {
            slot.latest_ready = Some(Rc::clone(&gateway));
        });
        self.state = State::Ready(gateway);
    }

    /// Stops this configuration's tick, if it set one. Only a context that
    /// polled has a tick to stop: Envoy keeps a timer entry for every root
    /// context that ever set a period, even 0, and never removes it, so
    /// setting 0 on every configuration grew Envoy's heap with every update
    /// (about 65 bytes per worker; docs/reliability.md).
    fn stop_ticking<H: Host>(&mut self, host: &mut H) {
        if self.ticking {
            let _ = host.set_tick_period(0);
            self.ticking = false;
        }
    }

    /// Serves `config`, whose `keys` are in the complete shared `table`.
    fn serve<H: Host>(
        &mut self,
        host: &mut H,
        vm: &mut VmState,
        config: Config,
        table: TableRef,
        keys: usize,
    ) {
        host.record(Metric::KeysLoaded, u64::try_from(keys).unwrap_or(u64::MAX));
        let gateway = Rc::new(Gateway::new(config, table));
        vm.with_slot(table.lineage, |slot| {
            slot.latest_ready = Some(Rc::clone(&gateway));
        });
        host.log(
            LogLevel::Info,
            &format!(
                "configuration loaded: {keys} keys, table generation {}",
                table.generation
            ),
        );
        if self.follower.is_none() {
            self.stop_ticking(host);
        }
        self.state = State::Ready(gateway);
    }

    /// Publishes (or finds) the table; `false` when the store refused.
    fn publish<H: Host>(
        &mut self,
        host: &mut H,
        vm: &mut VmState,
        lineage: Lineage,
        config: Box<Config>,
        digest: Digest,
        settings: Vec<u8>,
    ) -> bool {
        let reader: &H = host;
        let published = key_table::publish(
            reader.store(),
            &lineage,
            &digest,
            &config,
            &settings,
            &|| reader.monotonic_ns(),
        );
        match published {
            Ok(publication @ (Publication::Ready(table) | Publication::Written(table))) => {
                if matches!(publication, Publication::Written(_)) {
                    host.increment(Metric::ConfigAccepted, 1);
                }
                let keys = config.keys.len();
                self.serve(host, vm, *config, table, keys);
                true
            }
            Ok(Publication::Pending) => {
                self.state = State::Pending {
                    config,
                    digest,
                    settings,
                };
                self.ticking = true;
                if host.set_tick_period(PENDING_POLL_MS).is_err() {
                    host.log(
                        LogLevel::Warn,
                        "cannot set a tick; the pending table will not be polled",
                    );
                }
                true
            }
            Err(error) => {
                host.log(
                    LogLevel::Critical,
                    &format!("configuration refused: key table not published: {error:?}"),
                );
                false
            }
        }
    }
}

/// The digest of the plugin configuration of `size` bytes, and how many
/// bytes it covers, read a piece at a time.
fn configuration_digest<H: Host>(host: &H, size: usize) -> Result<(Digest, usize), HostError> {
    let mut digester = Digester::default();
    let mut start = 0;
    while start < size {
        let piece = host.plugin_configuration(start, HASH_PIECE_BYTES.min(size - start))?;
        if piece.is_empty() {
            break;
        }
        digester.update(&piece);
        start += piece.len();
    }
    Ok((digester.finish(), start))
}

/// The lineage of the configuration being loaded: its plugin's `name` and
/// `root_id`, which Envoy keeps across the filter's updates and which tell
/// apart filters sharing a `vm_id`. A host that does not say (none of
/// Envoy's) gets one lineage for all its filters, as before lineages
/// existed, and a warning.
fn plugin_lineage<H: Host>(host: &mut H) -> Lineage {
    let mut read = |property: Property, name: &str| match host.property(property) {
        Ok(Some(value)) => value,
        other => {
            host.log(
                LogLevel::Warn,
                &format!(
                    "property {name} unavailable ({:?}): filters sharing this vm_id share one key table",
                    other.err()
                ),
            );
            Vec::new()
        }
    };
    let name = read(Property::PluginName, "plugin_name");
    let root_id = read(Property::PluginRootId, "plugin_root_id");
    let lineage = Lineage::of(&name, &root_id);
    host.log(
        LogLevel::Info,
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
fn refuse_unreadable<H: Host>(host: &mut H, error: HostError) -> bool {
    host.log(
        LogLevel::Critical,
        &format!("configuration refused: unreadable ({error:?})"),
    );
    false
}

mod following;

use self::following::{Follower, FOLLOW_TICK_MS};

#[cfg(test)]
mod tests;
