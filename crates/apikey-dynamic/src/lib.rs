//! The native edge of the API-key gateway: `apikey-core` as an Envoy
//! dynamic module (`libapikey_dynamic.so`, Envoy 1.40, ABI v0.2.0).
//!
//! Envoy loads the module through
//! `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`
//! (`dynamic_module_config: {name: apikey_dynamic}`, `filter_name:
//! "apikey"`, `filter_config` a `StringValue` with the same JSON the Wasm
//! filter takes; contract §9). Everything that decides is the core's; this
//! crate is its [`Host`](apikey_core::host::Host) over the ABI ([`abi`],
//! [`host`]), a process-wide store with proxy-wasm's shared-data semantics
//! ([`store`]), per-thread core state standing in for the Wasm edge's
//! per-VM state ([`state`]), one stream's filter ([`filter`]) and the
//! panic boundary every call from Envoy goes through ([`entry`]).
//!
//! A panic in native code that reached Envoy would take the process down,
//! so the module must unwind to its boundaries: it refuses to build with
//! `panic = "abort"` (build it with `--profile release-native`, as
//! `scripts/build.sh` does).

#[cfg(panic = "abort")]
compile_error!(
    "apikey-dynamic must unwind to catch panics at its entry points: build it with \
     `cargo build --profile release-native -p apikey-dynamic` (panic = \"unwind\"), \
     never with the workspace's aborting release profile"
);

pub mod abi;
pub mod entry;
pub mod filter;
pub mod host;
pub mod state;
pub mod store;
