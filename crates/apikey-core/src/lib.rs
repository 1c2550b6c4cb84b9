//! The pure core of the API-key gateway filter.
//!
//! Everything that decides lives here, with no `proxy-wasm` dependency:
//! configuration validation ([`config`]), credential extraction
//! ([`credentials`]), path normalisation ([`path`]), rule matching
//! ([`rules`]), scope patterns ([`scope`]), rate-limit selection
//! ([`rate_limit`]) and the denial bodies clients see. The filter crate only
//! moves bytes between Envoy and these functions, so every behaviour can be
//! tested natively and, compiled to wasm32, under `wasm-bindgen-test`.

pub mod audit;
pub mod bucket_store;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod denial;
pub mod fleet;
pub mod header_map;
pub mod https;
pub mod key_cache;
pub mod key_hash;
pub mod key_record;
pub mod key_table;
pub mod memory_store;
pub mod path;
pub mod rate_limit;
pub mod rls_codec;
pub mod rules;
pub mod scope;
pub mod timestamp;
pub mod token_bucket;
