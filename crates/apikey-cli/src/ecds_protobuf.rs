//! The ECDS file as binary protobuf (`apikey.pb`).
//!
//! Envoy picks the parser of a path-sourced xDS file by its extension. A
//! `.yaml` or `.json` file goes through a text parser and then protobuf's
//! JSON mapping on Envoy's main thread, which for a 1,000,000-key table
//! (a ~130 MB configuration string) takes 12–26 s before the filter sees a
//! byte; a `.pb` file is one protobuf parse, well under a second. The
//! document is the same `DiscoveryResponse` as [`crate::render::ecds_document`].
//!
//! No protobuf library: the message is a fixed chain where each level's
//! last field holds the next, and the configuration string sits at the
//! bottom. The lengths are worked out inside out and the bytes written
//! outside in, so the (possibly huge) configuration is copied once.

use crate::render::{
    FilterModule, DYNAMIC_MODULE_TYPE, FILTER_NAME, RUNTIME, STRING_VALUE_TYPE,
    TYPED_EXTENSION_CONFIG_TYPE, WASM_TYPE,
};

/// Protobuf wire type of a length-delimited field (strings, bytes, messages).
const LENGTH_DELIMITED: u64 = 2;

/// One message of the chain: the fields before the nested one, already
/// encoded, and the number of the field that holds the next level.
struct Level {
    head: Vec<u8>,
    nested_field: u64,
}

/// `envoy.service.discovery.v3.DiscoveryResponse { resources: [Any {
/// TypedExtensionConfig { name, typed_config: Any { FILTER } }], type_url
/// }`, in protobuf's binary encoding. FILTER is the Wasm edge's `Wasm {
/// config: PluginConfig { name, root_id, vm_config, configuration: Any {
/// StringValue { value } } } }` or the native edge's `DynamicModuleFilter
/// { dynamic_module_config: { name }, filter_name, filter_config: Any {
/// StringValue { value } } }`.
pub fn ecds_protobuf(configuration: &str, module: &FilterModule) -> Vec<u8> {
    let mut chain = vec![
        // DiscoveryResponse.resources = 2 (type_url = 4 follows, below)
        level(|_| {}, 2),
        // Any { type_url = 1, value = 2 }
        level(
            |head| put_bytes(head, 1, TYPED_EXTENSION_CONFIG_TYPE.as_bytes()),
            2,
        ),
        // TypedExtensionConfig { name = 1, typed_config = 2 }
        level(|head| put_bytes(head, 1, FILTER_NAME.as_bytes()), 2),
    ];
    match module {
        FilterModule::Wasm(wasm) => {
            // VmConfig { vm_id = 1, runtime = 2, code = 3: AsyncDataSource {
            // local = 1: DataSource { filename = 1 } } }
            let mut vm_config = Vec::new();
            put_bytes(&mut vm_config, 1, FILTER_NAME.as_bytes());
            put_bytes(&mut vm_config, 2, RUNTIME.as_bytes());
            let mut data_source = Vec::new();
            put_bytes(&mut data_source, 1, wasm.as_bytes());
            let mut code = Vec::new();
            put_bytes(&mut code, 1, &data_source);
            put_bytes(&mut vm_config, 3, &code);
            chain.extend([
                // Any { type_url = 1, value = 2 }
                level(|head| put_bytes(head, 1, WASM_TYPE.as_bytes()), 2),
                // Wasm { config = 1 }
                level(|_| {}, 1),
                // PluginConfig { name = 1, root_id = 2, vm_config = 3, configuration = 4 }
                level(
                    |head| {
                        put_bytes(head, 1, FILTER_NAME.as_bytes());
                        put_bytes(head, 2, FILTER_NAME.as_bytes());
                        put_bytes(head, 3, &vm_config);
                    },
                    4,
                ),
            ]);
        }
        FilterModule::Native(name) => {
            // DynamicModuleConfig { name = 1 }
            let mut module_config = Vec::new();
            put_bytes(&mut module_config, 1, name.as_bytes());
            chain.extend([
                // Any { type_url = 1, value = 2 }
                level(|head| put_bytes(head, 1, DYNAMIC_MODULE_TYPE.as_bytes()), 2),
                // DynamicModuleFilter { dynamic_module_config = 1,
                // filter_name = 2, filter_config = 3 }
                level(
                    |head| {
                        put_bytes(head, 1, &module_config);
                        put_bytes(head, 2, FILTER_NAME.as_bytes());
                    },
                    3,
                ),
            ]);
        }
    }
    chain.extend([
        // Any { type_url = 1, value = 2 }
        level(|head| put_bytes(head, 1, STRING_VALUE_TYPE.as_bytes()), 2),
        // StringValue { value = 1 }
        level(|_| {}, 1),
    ]);

    // Inside out: the length of each level's nested field.
    let mut nested_lengths = vec![0u64; chain.len()];
    let mut inner = configuration.len() as u64;
    for (level, nested_length) in chain.iter().zip(nested_lengths.iter_mut()).rev() {
        *nested_length = inner;
        inner = level.head.len() as u64 + field_overhead(level.nested_field, inner) + inner;
    }

    let mut trailer = Vec::new();
    put_bytes(&mut trailer, 4, TYPED_EXTENSION_CONFIG_TYPE.as_bytes());
    let total = usize::try_from(inner).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(total.saturating_add(trailer.len()));
    for (level, nested_length) in chain.iter().zip(nested_lengths) {
        out.extend_from_slice(&level.head);
        put_varint(&mut out, level.nested_field << 3 | LENGTH_DELIMITED);
        put_varint(&mut out, nested_length);
    }
    out.extend_from_slice(configuration.as_bytes());
    out.extend_from_slice(&trailer);
    out
}

fn level(write_head: impl FnOnce(&mut Vec<u8>), nested_field: u64) -> Level {
    let mut head = Vec::new();
    write_head(&mut head);
    Level { head, nested_field }
}

/// The bytes a length-delimited field adds around `length` bytes of payload.
fn field_overhead(field: u64, length: u64) -> u64 {
    varint_length(field << 3 | LENGTH_DELIMITED) + varint_length(length)
}

fn varint_length(value: u64) -> u64 {
    let bits = 64 - u64::from(value.max(1).leading_zeros());
    bits.div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | LENGTH_DELIMITED);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf message's length-delimited fields, in order (every field
    /// of this document is length-delimited).
    fn fields(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
        fn varint(bytes: &mut &[u8]) -> u64 {
            let mut value = 0;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = bytes.split_first().expect("truncated varint");
                *bytes = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return value;
                }
            }
            panic!("varint longer than 64 bits")
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let tag = varint(&mut bytes);
            assert_eq!(
                tag & 7,
                LENGTH_DELIMITED,
                "field {} is not length-delimited",
                tag >> 3
            );
            let length = varint(&mut bytes) as usize;
            assert!(
                length <= bytes.len(),
                "field {} overruns its message",
                tag >> 3
            );
            let (payload, rest) = bytes.split_at(length);
            out.push((tag >> 3, payload));
            bytes = rest;
        }
        out
    }

    fn only(bytes: &[u8], field: u64) -> &[u8] {
        let found = fields(bytes);
        assert_eq!(found.len(), 1, "expected only field {field}: {found:?}");
        assert_eq!(found[0].0, field);
        found[0].1
    }

    fn any<'a>(bytes: &'a [u8], type_url: &str) -> &'a [u8] {
        let found = fields(bytes);
        assert_eq!(found.len(), 2, "an Any has a type_url and a value");
        assert_eq!((found[0].0, found[0].1), (1, type_url.as_bytes()));
        assert_eq!(found[1].0, 2);
        found[1].1
    }

    #[test]
    fn the_protobuf_document_carries_the_same_fields_as_the_json_one() {
        let configuration = r#"{"keys":[],"plans":{}}"#;
        let bytes = ecds_protobuf(
            configuration,
            &FilterModule::Wasm("/opt/apikey.wasm".into()),
        );

        let response = fields(&bytes);
        assert_eq!(response.len(), 2, "resources and type_url");
        assert_eq!(
            (response[1].0, response[1].1),
            (4, TYPED_EXTENSION_CONFIG_TYPE.as_bytes())
        );
        assert_eq!(response[0].0, 2);
        let resource = fields(any(response[0].1, TYPED_EXTENSION_CONFIG_TYPE));
        assert_eq!((resource[0].0, resource[0].1), (1, &b"apikey"[..]));
        let wasm = any(resource[1].1, WASM_TYPE);
        let plugin = fields(only(wasm, 1));
        let numbers: Vec<u64> = plugin.iter().map(|(number, _)| *number).collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
        assert_eq!((plugin[0].1, plugin[1].1), (&b"apikey"[..], &b"apikey"[..]));
        let vm = fields(plugin[2].1);
        assert_eq!((vm[0].1, vm[1].1), (&b"apikey"[..], RUNTIME.as_bytes()));
        assert_eq!(only(only(vm[2].1, 1), 1), b"/opt/apikey.wasm");
        let value = only(any(plugin[3].1, STRING_VALUE_TYPE), 1);
        assert_eq!(value, configuration.as_bytes());
    }

    #[test]
    fn the_native_protobuf_document_carries_the_same_fields_as_the_json_one() {
        let configuration = r#"{"keys":[],"plans":{}}"#;
        let bytes = ecds_protobuf(
            configuration,
            &FilterModule::Native("apikey_dynamic".into()),
        );

        let response = fields(&bytes);
        assert_eq!(response.len(), 2, "resources and type_url");
        let resource = fields(any(response[0].1, TYPED_EXTENSION_CONFIG_TYPE));
        assert_eq!((resource[0].0, resource[0].1), (1, &b"apikey"[..]));
        let filter = fields(any(resource[1].1, DYNAMIC_MODULE_TYPE));
        let numbers: Vec<u64> = filter.iter().map(|(number, _)| *number).collect();
        assert_eq!(
            numbers,
            [1, 2, 3],
            "dynamic_module_config, filter_name, filter_config"
        );
        assert_eq!(only(filter[0].1, 1), b"apikey_dynamic");
        assert_eq!(filter[1].1, b"apikey");
        let value = only(any(filter[2].1, STRING_VALUE_TYPE), 1);
        assert_eq!(value, configuration.as_bytes());
    }

    #[test]
    fn lengths_hold_for_configurations_whose_sizes_cross_varint_boundaries() {
        for size in [0, 1, 127, 128, 16_383, 16_384, 2_097_152] {
            let configuration = "x".repeat(size);
            let bytes = ecds_protobuf(&configuration, &FilterModule::Wasm("m.wasm".into()));
            let response = fields(&bytes);
            let resource = fields(any(response[0].1, TYPED_EXTENSION_CONFIG_TYPE));
            let plugin = fields(only(any(resource[1].1, WASM_TYPE), 1));
            let value = only(any(plugin[3].1, STRING_VALUE_TYPE), 1);
            assert_eq!(
                value.len(),
                size,
                "a {size}-byte configuration came back wrong"
            );
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(varint_length(value), out.len() as u64, "varint of {value}");
        }
    }
}
