//! The root context: the SDK's `RootContext`, delegating to the core's
//! [`Configuration`] with the VM's [`VmState`].
//!
//! Envoy creates a root context per configuration in every worker VM (and
//! once on the main thread to validate it); what a VM keeps across them
//! (per filter lineage: the newest gateway served and the configuration
//! count) lives in this module's one thread-local, handed to the core on
//! each call.

use std::cell::RefCell;

use apikey_core::config_lifecycle::{Configuration, VmState};
use apikey_core::host::LogLevel;
use apikey_core::request_flow::RequestFlow;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::host::{self, AbiHost};
use crate::http::RequestContext;
use crate::metrics;

thread_local! {
    /// This VM's state across its root contexts.
    static VM: RefCell<VmState> = const { RefCell::new(VmState::new()) };
}

/// Runs `use_vm` on this VM's state. The SDK never calls a context while
/// another runs, so the state is always free; should it not be, the call
/// is refused rather than panicking.
fn with_vm<T>(use_vm: impl FnOnce(&mut VmState) -> T) -> Option<T> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| use_vm(&mut vm)))
}

/// One configuration's root context.
#[derive(Default)]
pub struct ConfigContext(Configuration);

impl Context for ConfigContext {
    /// A feed answer for this configuration's `key_source` follower.
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let _ = with_vm(|vm| {
            self.0.on_http_answer(&mut AbiHost, vm, token_id, body_size);
        });
    }
}

impl RootContext for ConfigContext {
    fn on_configure(&mut self, configuration_size: usize) -> bool {
        metrics::define_all();
        with_vm(|vm| self.0.configure(&mut AbiHost, vm, configuration_size)).unwrap_or_else(|| {
            host::log(LogLevel::Critical, "configuration refused: VM state busy");
            false
        })
    }

    fn on_tick(&mut self) {
        let _ = with_vm(|vm| self.0.tick(&mut AbiHost, vm));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = with_vm(|vm| self.0.gateway(vm)).flatten();
        let flow = RequestFlow::new(gateway).with_usage(self.0.usage_log());
        Some(Box::new(RequestContext(flow)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
