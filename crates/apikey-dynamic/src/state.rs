//! What the native edge keeps: one [`SharedConfig`] per Envoy filter
//! configuration, seen by every thread, and per thread one [`VmState`] with
//! that thread's [`Configuration`] of each filter configuration.
//!
//! The proxy-wasm edge runs one VM per worker (plus one on the main
//! thread), and Envoy creates a root context per configuration in each.
//! Here a thread plays the VM: Envoy hands the module one configuration
//! object, on the main thread, and every worker then makes streams from
//! it; so each thread configures its own core [`Configuration`] the first
//! time it needs one (the main thread in `config_new`, which validates and
//! publishes the key table; a worker on its first stream, which finds the
//! table already complete and only reads its settings). The core's
//! per-VM caches (key records, the gateway's `Rc`) therefore work
//! unchanged, while the key table and buckets are the process's
//! ([`crate::store`]).
//!
//! Ticks: the main thread's configuration is ticked through Envoy's
//! configuration scheduler, by a module thread ([`ticker`]) that posts an
//! event every period; a worker's is ticked on its request path, before a
//! stream is served, when its period has passed (a worker with no streams
//! has nothing to serve stale). `key_source` is followed by the main
//! thread, the only one that can make configuration-level callouts; the
//! workers read the table it writes.
//!
//! Key usage (`key_source` only) goes the same way: workers count into
//! shards of their lineage's [`usage::UsageRelay`], and the main thread's
//! newest configuration of the lineage collects them on each tick, before
//! its core reporter sends (at most every 10 s).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use apikey_core::config_lifecycle::{Configuration, VmState};
use apikey_core::decision::Gateway;
use apikey_core::host::Clock;
use apikey_core::key_table::Lineage;
use apikey_core::metrics::Metric;
use apikey_core::store::names::live_lease_key;
use apikey_core::usage::UsageLog;

use crate::abi::{ConfigEnvoy, FilterEnvoy, MetricKind};
use crate::host::{monotonic_ns, Context, NativeHost};
use crate::store::{WorkerStore, STORE};

pub mod ticker;
pub mod usage;

use usage::{UsageRelay, WorkerUsage};

/// One Envoy filter configuration, shared by every thread.
pub struct SharedConfig {
    /// This configuration's number in the process (never reused).
    pub id: u64,
    /// Envoy's configuration object.
    pub envoy: ConfigEnvoy,
    /// The plugin name the core's lineage reads (`apikey`).
    pub name: Vec<u8>,
    /// The plugin root id (the instance after `apikey:` in `filter_name`).
    pub root_id: Vec<u8>,
    /// The configuration text, for each thread's first configure.
    pub bytes: Vec<u8>,
    /// Metric ids by [`Metric::index`].
    metric_ids: Vec<Option<usize>>,
    /// The `key_source` lease entry, which only the main thread writes.
    lease_key: String,
    /// The filter this configuration belongs to.
    lineage: Lineage,
    /// Where workers leave key uses for the main thread (`key_source`).
    usage: Arc<UsageRelay>,
    /// Set when Envoy destroyed the configuration: threads drop theirs.
    destroyed: AtomicBool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl SharedConfig {
    /// A configuration Envoy just handed over, its metrics defined.
    pub fn new(envoy: ConfigEnvoy, name: &[u8], root_id: &[u8], bytes: Vec<u8>) -> Self {
        let mut metric_ids = vec![None; Metric::COUNT];
        for metric in Metric::all() {
            let kind = match metric.kind() {
                apikey_core::metrics::MetricKind::Counter => MetricKind::Counter,
                apikey_core::metrics::MetricKind::Gauge => MetricKind::Gauge,
            };
            if let Some(slot) = metric.index().and_then(|index| metric_ids.get_mut(index)) {
                *slot = envoy.define(kind, &metric.name());
            }
        }
        let lineage = Lineage::of(name, root_id);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            envoy,
            name: name.to_vec(),
            root_id: root_id.to_vec(),
            bytes,
            metric_ids,
            lease_key: live_lease_key(&lineage),
            lineage,
            usage: UsageRelay::of(lineage),
            destroyed: AtomicBool::new(false),
        }
    }

    /// The id Envoy gave `metric`, if it defined it.
    pub fn metric_id(&self, metric: Metric) -> Option<usize> {
        metric
            .index()
            .and_then(|index| self.metric_ids.get(index).copied().flatten())
    }

    /// Marks the configuration destroyed.
    pub fn destroy(&self) {
        self.destroyed.store(true, Ordering::Release);
    }

    fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    /// The store as a worker sees it (the lease read-only).
    pub fn worker_store(&self) -> WorkerStore<'_> {
        WorkerStore {
            read_only: Some(&self.lease_key),
        }
    }
}

/// One thread's core configuration of one filter configuration.
struct Slot {
    shared: Arc<SharedConfig>,
    configuration: Configuration,
    /// The tick period the core asked for (0: none).
    tick_ms: u32,
    next_tick_ns: u64,
    /// A worker whose configure failed tries again after this instant.
    retry_at_ns: Option<u64>,
    /// A worker's shard of the usage relay, once it follows a key source.
    usage: Option<Rc<WorkerUsage>>,
}

/// What one thread keeps.
#[derive(Default)]
struct ThreadState {
    vm: VmState,
    slots: HashMap<u64, Slot>,
}

thread_local! {
    static THREAD: RefCell<ThreadState> = RefCell::new(ThreadState::default());
}

/// How long a worker waits before configuring again after a failure.
const RETRY_NS: u64 = 100_000_000;

/// What a stream needs from its thread's configuration.
pub struct Serving {
    /// The gateway deciding (`None`: 503 `not_configured`).
    pub gateway: Option<Rc<Gateway>>,
    /// Where key uses are counted (`key_source` only).
    pub usage: Option<Rc<WorkerUsage>>,
}

/// Configures `shared` on the main thread (Envoy's `config_new`): `Some`
/// with the tick period the core asked for, `None` when refused.
pub fn configure_main(shared: &Arc<SharedConfig>) -> Option<u32> {
    THREAD.with(|thread| {
        let mut thread = thread.try_borrow_mut().ok()?;
        let ThreadState { vm, slots } = &mut *thread;
        let mut host = NativeHost::new(Context::Config(shared.envoy), shared, &*STORE);
        let mut configuration = Configuration::new();
        if !configuration.configure(&mut host, vm, shared.bytes.len()) {
            return None;
        }
        let tick_ms = host.tick_period.unwrap_or(0);
        slots.insert(
            shared.id,
            Slot {
                shared: Arc::clone(shared),
                configuration,
                tick_ms,
                next_tick_ns: 0,
                retry_at_ns: None,
                usage: None,
            },
        );
        Some(tick_ms)
    })
}

/// Ticks `shared`'s configuration on the main thread; the new period.
/// The newest configuration of a lineage first collects what the workers
/// counted, so its reporter's tick sends it when a report is due.
pub fn tick_main(shared: &SharedConfig, envoy: ConfigEnvoy) -> Option<u32> {
    let newest = is_newest_of_lineage(shared);
    with_slot(shared.id, |vm, slot| {
        let mut host = NativeHost::new(Context::Config(envoy), shared, &*STORE);
        if newest {
            if let Some(log) = slot.configuration.usage_log() {
                if let Ok(mut log) = log.try_borrow_mut() {
                    shared.usage.collect(&mut log, host.wall_ns());
                }
            }
        }
        slot.configuration.tick(&mut host, vm);
        if let Some(period) = host.tick_period {
            slot.tick_ms = period;
        }
        slot.tick_ms
    })
}

/// Delivers a configuration callout's answer on the main thread.
pub fn answer_main(
    shared: &SharedConfig,
    envoy: ConfigEnvoy,
    token: u32,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> Option<u32> {
    with_slot(shared.id, |vm, slot| {
        let mut host =
            NativeHost::new(Context::Config(envoy), shared, &*STORE).with_answer((headers, body));
        slot.configuration
            .on_http_answer(&mut host, vm, token, body.len());
        if let Some(period) = host.tick_period {
            slot.tick_ms = period;
        }
        slot.tick_ms
    })
}

/// Forgets `shared` on this thread (the main thread, at `config_destroy`),
/// handing what its usage log had not sent back to the lineage's relay
/// (a report in flight is left to its fate: counted twice is worse than
/// lost).
pub fn forget(shared: &SharedConfig) {
    let slot = THREAD.with(|thread| {
        thread
            .try_borrow_mut()
            .ok()
            .and_then(|mut thread| thread.slots.remove(&shared.id))
    });
    let log = slot.and_then(|slot| slot.configuration.usage_log());
    if let Some(log) = log {
        if let Ok(mut log) = log.try_borrow_mut() {
            let wall_ns = NativeHost::new(Context::Config(shared.envoy), shared, &*STORE).wall_ns();
            let left = std::mem::replace(&mut *log, UsageLog::new(wall_ns));
            if left.pending_keys() > 0 {
                shared.usage.hand_back(left);
            }
        }
    }
}

/// Whether no configuration of `shared`'s lineage on this thread is newer
/// (a replaced one sends what it holds and stops; the newest collects).
fn is_newest_of_lineage(shared: &SharedConfig) -> bool {
    THREAD.with(|thread| {
        thread.try_borrow().map_or(true, |thread| {
            !thread
                .slots
                .values()
                .any(|slot| slot.shared.lineage == shared.lineage && slot.shared.id > shared.id)
        })
    })
}

fn with_slot<T>(id: u64, use_slot: impl FnOnce(&mut VmState, &mut Slot) -> T) -> Option<T> {
    THREAD.with(|thread| {
        let mut thread = thread.try_borrow_mut().ok()?;
        let ThreadState { vm, slots } = &mut *thread;
        slots.get_mut(&id).map(|slot| use_slot(vm, slot))
    })
}

/// What a new stream of `shared` on this worker is served with:
/// configuring the worker's copy first if needed, and ticking it when its
/// period has passed.
pub fn serve(shared: &Arc<SharedConfig>, filter: FilterEnvoy) -> Serving {
    let unserved = Serving {
        gateway: None,
        usage: None,
    };
    THREAD
        .with(|thread| {
            let mut thread = thread.try_borrow_mut().ok()?;
            let ThreadState { vm, slots } = &mut *thread;
            let now = monotonic_ns();
            if !slots.contains_key(&shared.id) {
                // A new configuration on this thread: a good moment to drop
                // the ones Envoy destroyed since.
                slots.retain(|_, slot| !slot.shared.is_destroyed());
                slots.insert(
                    shared.id,
                    Slot {
                        shared: Arc::clone(shared),
                        configuration: Configuration::new(),
                        tick_ms: 0,
                        next_tick_ns: 0,
                        retry_at_ns: Some(0),
                        usage: None,
                    },
                );
            }
            let slot = slots.get_mut(&shared.id)?;
            let store = shared.worker_store();
            if slot.retry_at_ns.is_some_and(|at| now >= at) {
                let mut host = NativeHost::new(Context::Filter(filter), shared, &store);
                let mut configuration = Configuration::new();
                if configuration.configure(&mut host, vm, shared.bytes.len()) {
                    if configuration.usage_log().is_some() && slot.usage.is_none() {
                        slot.usage = Some(Rc::new(shared.usage.worker(host.wall_ns())));
                    }
                    slot.configuration = configuration;
                    slot.retry_at_ns = None;
                    slot.tick_ms = host.tick_period.unwrap_or(0);
                    slot.next_tick_ns = now.saturating_add(ms_to_ns(slot.tick_ms));
                } else {
                    slot.retry_at_ns = Some(now.saturating_add(RETRY_NS));
                }
            } else if slot.tick_ms > 0 && now >= slot.next_tick_ns {
                let mut host = NativeHost::new(Context::Filter(filter), shared, &store);
                slot.configuration.tick(&mut host, vm);
                if let Some(period) = host.tick_period {
                    slot.tick_ms = period;
                }
                slot.next_tick_ns = now.saturating_add(ms_to_ns(slot.tick_ms));
            }
            Some(Serving {
                gateway: slot.configuration.gateway(vm),
                // Not the worker's own core log: its reporter could not
                // send (no callout outside a stream); the main thread
                // collects this shard and reports.
                usage: slot.usage.clone(),
            })
        })
        .unwrap_or(unserved)
}

fn ms_to_ns(ms: u32) -> u64 {
    u64::from(ms) * 1_000_000
}
