//! The pure core of the API-key gateway filter.
//!
//! Everything that decides lives here, with no `proxy-wasm` dependency:
//! configuration validation ([`config`]), credential extraction
//! ([`credentials`]), path normalisation ([`path`]), rule matching
//! ([`rules`]), scope patterns ([`scope`]), rate-limit selection
//! ([`rate_limit`]), the decision ([`decision`]) and the denial bodies
//! clients see; and around them the two lifecycles the proxy drives, one
//! request ([`request_flow`]) and one configuration ([`config_lifecycle`]),
//! which reach Envoy only through the [`host::Host`] port. The filter crate
//! implements that port over the proxy-wasm ABI and only delegates, so
//! every behaviour can be tested natively against a recording host and,
//! compiled to wasm32, under `wasm-bindgen-test`.

pub mod audit;
pub mod bucket_store;
pub mod config;
pub mod config_lifecycle;
pub mod credentials;
pub mod decision;
pub mod denial;
pub mod feed_digest;
pub mod fleet;
pub mod header_map;
pub mod host;
pub mod https;
pub mod key_cache;
pub mod key_hash;
pub mod key_record;
pub mod key_source;
pub mod key_table;
pub mod live_table;
pub mod memory_store;
pub mod metrics;
#[cfg(test)]
mod mock_host;
pub mod path;
pub mod rate_limit;
pub mod refusal;
pub mod request_flow;
pub mod rls_codec;
pub mod rules;
pub mod scope;
pub mod store;
pub mod timestamp;
pub mod token_bucket;
pub mod token_lease;
pub mod usage;
