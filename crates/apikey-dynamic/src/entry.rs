//! Every way Envoy calls into the module, each behind a panic boundary.
//!
//! A native module has no trap boundary: a panic that unwound into Envoy
//! would abort the process. So each entry point runs its body in
//! [`catch_unwind`]; the panic hook (installed at load) has already logged
//! the panic at critical level, and the entry point fails closed: a
//! request is answered 503 `not_configured` and its stream is left alone
//! after; a configuration is refused (Envoy keeps the previous one); a
//! tick or an answer is dropped (the next tick tries again).
//!
//! A test-only trigger forces such a panic: the environment variable
//! [`PANIC_PATH_VAR`], read once at load, names a request path whose
//! request-headers hook panics, and [`PANIC_CONFIG_VAR`] a marker whose
//! presence in a configuration makes its setup panic. Neither is set in
//! any shipped configuration; only whoever controls Envoy's environment
//! can set them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use apikey_core::denial::{Denial, DenialText, ErrorCode};
use apikey_core::header_map;
use apikey_core::host::LogLevel;
use apikey_core::request_flow::{Action, RequestFlow};

use crate::abi::{ConfigEnvoy, FilterEnvoy};
use crate::filter::{Filter, GrpcAnswer, UNAVAILABLE};
use crate::host::{self, Context, NativeHost};
use crate::state::{self, ticker, SharedConfig};

/// Names a request path whose request-headers hook panics (tests only).
pub const PANIC_PATH_VAR: &str = "APIKEY_DYNAMIC_TEST_PANIC_PATH";
/// Names a marker whose presence in a configuration makes its setup
/// panic (tests only).
pub const PANIC_CONFIG_VAR: &str = "APIKEY_DYNAMIC_TEST_PANIC_CONFIG";

/// The test triggers, read once at load.
struct Triggers {
    path: Option<Vec<u8>>,
    config: Option<Vec<u8>>,
}

static TRIGGERS: OnceLock<Triggers> = OnceLock::new();

fn triggers() -> &'static Triggers {
    TRIGGERS.get_or_init(|| Triggers {
        path: std::env::var_os(PANIC_PATH_VAR)
            .filter(|value| !value.is_empty())
            .map(|value| value.into_encoded_bytes()),
        config: std::env::var_os(PANIC_CONFIG_VAR)
            .filter(|value| !value.is_empty())
            .map(|value| value.into_encoded_bytes()),
    })
}

/// Runs `body`, turning a panic into `None` (already logged by the hook).
fn guarded<T>(what: &str, body: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => Some(value),
        Err(_) => {
            host::log(
                LogLevel::Critical,
                &format!("apikey: panic caught in {what}; failing closed"),
            );
            None
        }
    }
}

/// The module was loaded: log panics at critical level from now on, and
/// read the test triggers.
pub fn program_init() {
    let _ = guarded("program_init", || {
        std::panic::set_hook(Box::new(|info| {
            host::log(LogLevel::Critical, &format!("apikey: panic: {info}"));
        }));
        let triggers = triggers();
        if triggers.path.is_some() || triggers.config.is_some() {
            host::log(
                LogLevel::Warn,
                "apikey: a test panic trigger is set in the environment",
            );
        }
    });
}

/// The plugin name and root id `filter_name` spells: `apikey`, or
/// `apikey:<instance>` for a second filter of the same Envoy that must
/// keep its own table (contract §7.1); anything else is refused.
fn plugin_names(filter_name: &[u8]) -> Option<(&[u8], &[u8])> {
    const NAME: &[u8] = b"apikey";
    let rest = filter_name.strip_prefix(NAME)?;
    match rest {
        [] => Some((NAME, NAME)),
        [b':', instance @ ..] if !instance.is_empty() => Some((NAME, instance)),
        _ => None,
    }
}

/// A new filter configuration (main thread): validated and its table
/// published by the core; `None` refuses it.
pub fn config_new(
    envoy: ConfigEnvoy,
    filter_name: &[u8],
    bytes: &[u8],
) -> Option<Arc<SharedConfig>> {
    guarded("config_new", || {
        let Some((name, root_id)) = plugin_names(filter_name) else {
            host::log(
                LogLevel::Critical,
                &format!(
                    "configuration refused: filter_name {:?} is neither \"apikey\" nor \"apikey:<instance>\"",
                    String::from_utf8_lossy(filter_name)
                ),
            );
            return None;
        };
        if let Some(marker) = &triggers().config {
            if bytes.windows(marker.len()).any(|window| window == marker.as_slice()) {
                force_panic("configuration setup");
            }
        }
        let shared = Arc::new(SharedConfig::new(envoy, name, root_id, bytes.to_vec()));
        let period = state::configure_main(&shared)?;
        if period > 0 {
            match envoy.scheduler() {
                Some(scheduler) => ticker::register(shared.id, scheduler, period),
                None => host::log(
                    LogLevel::Critical,
                    "apikey: Envoy gave no scheduler; this configuration will not tick",
                ),
            }
        }
        Some(shared)
    })
    .flatten()
}

/// The deliberate panic of the test triggers.
#[allow(clippy::panic)]
fn force_panic(where_: &str) -> ! {
    panic!("test trigger: forced panic in {where_}")
}

/// Envoy destroyed a configuration (main thread).
pub fn config_destroy(shared: Arc<SharedConfig>) {
    let _ = guarded("config_destroy", || {
        shared.destroy();
        ticker::remove(shared.id);
        state::forget(&shared);
    });
}

/// A tick of a configuration (main thread).
pub fn config_tick(shared: &SharedConfig, envoy: ConfigEnvoy) {
    let _ = guarded("config_tick", || {
        if let Some(period) = state::tick_main(shared, envoy) {
            ticker::set_period(shared.id, period);
        }
    });
}

/// The answer to a configuration's callout (main thread).
pub fn config_http_answer(
    shared: &SharedConfig,
    envoy: ConfigEnvoy,
    callout_id: u64,
    headers: &[(&[u8], &[u8])],
    body: Vec<u8>,
) {
    let _ = guarded("config_http_answer", || {
        let token = u32::try_from(callout_id & u64::from(u32::MAX)).unwrap_or(0);
        if let Some(period) = state::answer_main(shared, envoy, token, headers, &body) {
            if !ticker::is_registered(shared.id) && period > 0 {
                if let Some(scheduler) = envoy.scheduler() {
                    ticker::register(shared.id, scheduler, period);
                }
            } else {
                ticker::set_period(shared.id, period);
            }
        }
    });
}

/// A new stream (worker thread).
pub fn filter_new(shared: &Arc<SharedConfig>, envoy: FilterEnvoy) -> Filter {
    let serving = guarded("filter_new", || state::serve(shared, envoy));
    let poisoned = serving.is_none();
    let (gateway, usage) = serving.map_or((None, None), |serving| (serving.gateway, serving.usage));
    Filter {
        flow: RequestFlow::new(gateway).with_usage(usage),
        shared: Arc::clone(shared),
        poisoned,
        answer: GrpcAnswer::default(),
    }
}

/// Answers a stream whose hook panicked: 503 `not_configured`, unless a
/// reply already went out.
fn fail_closed(filter: &mut Filter, envoy: FilterEnvoy, replied: bool) {
    filter.poisoned = true;
    if replied {
        return;
    }
    let _ = guarded("the fail-closed reply", || {
        let reply = DenialText::default().render(&Denial::new(ErrorCode::NotConfigured), None);
        host::send_reply(envoy, &reply, "apikey_panic");
    });
}

/// The request headers; `true` lets the request go on.
pub fn request_headers(filter: &mut Filter, envoy: FilterEnvoy) -> bool {
    if filter.poisoned {
        fail_closed(filter, envoy, false);
        return false;
    }
    // Borrowed, not cloned: every worker's streams share this `Arc`, and
    // a clone per hook would bounce its count between their cores.
    let Filter { flow, shared, .. } = filter;
    let store = shared.worker_store();
    let mut replied = false;
    let action = guarded("request_headers", || {
        if let Some(path) = &triggers().path {
            if requested_path(envoy).as_deref() == Some(path.as_slice()) {
                force_panic("request_headers");
            }
        }
        let mut host = NativeHost::new(Context::Filter(envoy), shared, &store);
        let action = flow.on_request_headers(&mut host);
        replied = host.replied;
        action
    });
    match action {
        Some(Action::Continue) => true,
        Some(Action::Pause) => false,
        None => {
            fail_closed(filter, envoy, replied);
            false
        }
    }
}

/// The request's `:path` (test trigger only).
fn requested_path(envoy: FilterEnvoy) -> Option<Vec<u8>> {
    let bytes = envoy.headers(crate::abi::HeaderMap::Request)?;
    let pairs = header_map::parse(&bytes).ok()?;
    pairs
        .iter()
        .find(|(name, _)| *name == b":path")
        .map(|(_, value)| value.to_vec())
}

/// The response headers.
pub fn response_headers(filter: &mut Filter, envoy: FilterEnvoy) {
    if filter.poisoned {
        return;
    }
    let Filter { flow, shared, .. } = filter;
    let store = shared.worker_store();
    let done = guarded("response_headers", || {
        let mut host = NativeHost::new(Context::Filter(envoy), shared, &store);
        flow.on_response_headers(&mut host);
    });
    if done.is_none() {
        filter.poisoned = true;
    }
}

/// Headers or trailers of the fleet call's answer.
pub fn stream_headers(filter: &mut Filter, pairs: &[(&[u8], &[u8])]) {
    let _ = guarded("stream_headers", || filter.answer.headers(pairs));
}

/// A body chunk of the fleet call's answer.
pub fn stream_data(filter: &mut Filter, chunk: &[u8]) {
    let _ = guarded("stream_data", || {
        filter.answer.body.extend_from_slice(chunk)
    });
}

/// The fleet call ended: `completed`, or reset.
pub fn stream_end(filter: &mut Filter, envoy: FilterEnvoy, completed: bool) {
    if filter.poisoned {
        return;
    }
    let shared = Arc::clone(&filter.shared);
    let store = shared.worker_store();
    let answer = std::mem::take(&mut filter.answer);
    let mut replied = false;
    let done = guarded("the fleet answer", || {
        let (status, message) = if completed {
            answer.outcome()
        } else {
            (UNAVAILABLE, &[][..])
        };
        let mut host =
            NativeHost::new(Context::Filter(envoy), &shared, &store).with_grpc_body(message);
        filter
            .flow
            .on_fleet_answer(&mut host, status, message.len());
        replied = host.replied;
    });
    if done.is_none() {
        fail_closed(filter, envoy, replied);
    }
}

/// The stream's filter is destroyed.
pub fn filter_destroy(filter: Filter) {
    let _ = guarded("filter_destroy", move || drop(filter));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_spell_the_lineage() {
        assert_eq!(
            plugin_names(b"apikey"),
            Some((&b"apikey"[..], &b"apikey"[..]))
        );
        assert_eq!(
            plugin_names(b"apikey:admin"),
            Some((&b"apikey"[..], &b"admin"[..]))
        );
        for refused in [&b"apikey:"[..], b"other", b"apikeyx", b""] {
            assert_eq!(plugin_names(refused), None, "{refused:?} was accepted");
        }
    }

    #[test]
    fn a_panic_becomes_none() {
        assert_eq!(guarded("test", || 7), Some(7));
        let caught = std::panic::catch_unwind(|| guarded("test", || force_panic("a test")));
        assert!(matches!(caught, Ok(None)), "the panic was not caught");
    }
}
