//! The documents that carry the configuration to a proxy.
//!
//! - The Envoy ECDS file (`apikey.yaml` in the watched directory, or
//!   `apikey.pb`, see [`EcdsFormat`]): a `DiscoveryResponse` holding one
//!   `TypedExtensionConfig` named `apikey` whose filter is the bootstrap's
//!   `default_config` with the plugin configuration as a compact JSON
//!   string. On the Wasm edge (envoy/envoy.yaml) that is a Wasm filter of
//!   the same name, root id, VM id and runtime: the VM id must match, the
//!   key table lives in that VM id's shared data. On the native edge
//!   (envoy/envoy-native.yaml, contract §9) it is a dynamic-module filter
//!   of the same module and filter name ([`FilterModule`]).
//! - The Istio `WasmPlugin` (`extensions.istio.io/v1alpha1`), with the
//!   configuration object as `pluginConfig`.
//!
//! Both are JSON or JSON inside YAML, which every YAML parser reads, so
//! nothing here needs a YAML library; strings are always written as JSON
//! strings, which are valid YAML double-quoted scalars.

use serde::Serialize;

use crate::ecds_protobuf::ecds_protobuf;

/// The filter's name, root id and VM id, as in envoy/envoy.yaml.
pub const FILTER_NAME: &str = "apikey";
/// The Wasm runtime, as in envoy/envoy.yaml.
pub const RUNTIME: &str = "envoy.wasm.runtime.v8";
/// The type of the ECDS resource.
pub const TYPED_EXTENSION_CONFIG_TYPE: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The type of the resource's filter configuration.
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The type of the plugin configuration's wrapper.
pub const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The type of the native edge's filter configuration (contract §9).
pub const DYNAMIC_MODULE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// The dynamic module envoy/envoy-native.yaml loads: Envoy opens
/// `libapikey_dynamic.so` from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const DEFAULT_DYNAMIC_MODULE: &str = "apikey_dynamic";

/// Which build of the filter an ECDS resource runs, and where Envoy finds
/// it; it must be the bootstrap's (`default_config`), or Envoy refuses the
/// resource (its `type_urls`) or loads a second module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterModule {
    /// The Wasm module at this path (envoy/envoy.yaml).
    Wasm(String),
    /// The native dynamic module of this name, `libNAME.so` in
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (envoy/envoy-native.yaml).
    Native(String),
}

/// How the ECDS file is written. Envoy chooses the parser of a watched
/// file by its extension, so the format is also the file's name, and the
/// bootstrap's `path_config_source.path` must name the same one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EcdsFormat {
    /// `apikey.yaml`: one line of JSON (valid YAML), readable, what
    /// envoy/envoy.yaml watches. Envoy's text parsing of it grows with the
    /// table: about 26 s of its main thread for 1,000,000 keys.
    #[default]
    Yaml,
    /// `apikey.pb`: the same document as binary protobuf, which Envoy
    /// reads without a text parser; for tables of 100,000 keys and more.
    Protobuf,
}

impl EcdsFormat {
    /// `yaml` or `pb`, as `--ecds-format` spells them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "yaml" => Some(Self::Yaml),
            "pb" => Some(Self::Protobuf),
            _ => None,
        }
    }

    /// The ECDS file's name in the watched directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Yaml => "apikey.yaml",
            Self::Protobuf => "apikey.pb",
        }
    }
}
/// The module path envoy/envoy.yaml loads, relative to the repository root
/// where Envoy is started.
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/apikey_filter.wasm";

#[derive(Serialize)]
struct Discovery<'a> {
    resources: [Resource<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    name: &'static str,
    typed_config: TypedConfig<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum TypedConfig<'a> {
    Wasm {
        #[serde(rename = "@type")]
        type_url: &'static str,
        config: PluginConfig<'a>,
    },
    Native {
        #[serde(rename = "@type")]
        type_url: &'static str,
        dynamic_module_config: DynamicModuleConfig<'a>,
        filter_name: &'static str,
        filter_config: StringValue<'a>,
    },
}

#[derive(Serialize)]
struct DynamicModuleConfig<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct PluginConfig<'a> {
    name: &'static str,
    root_id: &'static str,
    vm_config: VmConfig<'a>,
    configuration: StringValue<'a>,
}

#[derive(Serialize)]
struct VmConfig<'a> {
    vm_id: &'static str,
    runtime: &'static str,
    code: Code<'a>,
}

#[derive(Serialize)]
struct Code<'a> {
    local: Local<'a>,
}

#[derive(Serialize)]
struct Local<'a> {
    filename: &'a str,
}

#[derive(Serialize)]
struct StringValue<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    value: &'a str,
}

/// The ECDS file's text for a compact configuration and the filter's
/// module, one line of JSON ending in a newline.
pub fn ecds_document(
    configuration: &str,
    module: &FilterModule,
) -> Result<String, serde_json::Error> {
    let value = StringValue {
        type_url: STRING_VALUE_TYPE,
        value: configuration,
    };
    let typed_config = match module {
        FilterModule::Wasm(wasm) => TypedConfig::Wasm {
            type_url: WASM_TYPE,
            config: PluginConfig {
                name: FILTER_NAME,
                root_id: FILTER_NAME,
                vm_config: VmConfig {
                    vm_id: FILTER_NAME,
                    runtime: RUNTIME,
                    code: Code {
                        local: Local { filename: wasm },
                    },
                },
                configuration: value,
            },
        },
        FilterModule::Native(name) => TypedConfig::Native {
            type_url: DYNAMIC_MODULE_TYPE,
            dynamic_module_config: DynamicModuleConfig { name },
            filter_name: FILTER_NAME,
            filter_config: value,
        },
    };
    let document = Discovery {
        resources: [Resource {
            type_url: TYPED_EXTENSION_CONFIG_TYPE,
            name: FILTER_NAME,
            typed_config,
        }],
    };
    let mut text = serde_json::to_string(&document)?;
    text.push('\n');
    Ok(text)
}

/// The ECDS file's bytes in `format`.
pub fn ecds_file(
    configuration: &str,
    module: &FilterModule,
    format: EcdsFormat,
) -> Result<Vec<u8>, serde_json::Error> {
    match format {
        EcdsFormat::Yaml => ecds_document(configuration, module).map(String::into_bytes),
        EcdsFormat::Protobuf => Ok(ecds_protobuf(configuration, module)),
    }
}

/// Where and how Istio installs the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioOptions {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.selector.matchLabels`.
    pub selector: Vec<(String, String)>,
    /// `spec.url`: where the module is fetched (`oci://`, `https://`, `file://`).
    pub url: String,
}

impl Default for IstioOptions {
    fn default() -> Self {
        Self {
            name: FILTER_NAME.to_owned(),
            namespace: "istio-system".to_owned(),
            selector: vec![("app".to_owned(), "istio-ingressgateway".to_owned())],
            url: "oci://ghcr.io/OWNER/apikey-filter:latest".to_owned(),
        }
    }
}

/// The Istio `WasmPlugin` resource as YAML, `pluginConfig` being the
/// configuration object (`configuration`, written as indented JSON: a YAML
/// flow mapping, in the state file's field order).
pub fn istio_wasm_plugin(
    configuration: &impl Serialize,
    options: &IstioOptions,
) -> Result<String, serde_json::Error> {
    let quote = |text: &str| serde_json::to_string(text);
    let mut yaml = String::new();
    yaml.push_str("# The API-key gateway filter for Istio, rendered by `apikey render istio`.\n");
    yaml.push_str("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n");
    yaml.push_str(&format!("  name: {}\n", quote(&options.name)?));
    yaml.push_str(&format!("  namespace: {}\n", quote(&options.namespace)?));
    yaml.push_str("spec:\n  selector:\n    matchLabels:\n");
    for (label, value) in &options.selector {
        yaml.push_str(&format!("      {}: {}\n", quote(label)?, quote(value)?));
    }
    yaml.push_str(&format!("  url: {}\n", quote(&options.url)?));
    yaml.push_str("  # Authentication runs before authorization and routing filters.\n");
    yaml.push_str("  phase: AUTHN\n");
    yaml.push_str(
        "  # The filter fails closed (503 not_configured until a valid configuration\n  \
         # loads), so the loader must too: with FAIL_OPEN a module that cannot be\n  \
         # fetched or started would let every request through unauthenticated.\n",
    );
    yaml.push_str("  failStrategy: FAIL_CLOSE\n");
    yaml.push_str("  pluginConfig:\n");
    let pretty = serde_json::to_string_pretty(configuration)?;
    for line in pretty.lines() {
        yaml.push_str("    ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    Ok(yaml)
}

/// Parses `app=istio-ingressgateway,version=v1` into label pairs.
pub fn parse_selector(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((label, value)) if !label.trim().is_empty() => {
                Ok((label.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(format!(
                "bad selector {text:?}: use label=value[,label=value]"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn the_ecds_document_has_the_shape_envoy_watches_for() {
        let configuration = r#"{"keys":[],"plans":{}}"#;
        let text = ecds_document(
            configuration,
            &FilterModule::Wasm("/opt/apikey.wasm".into()),
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let expected = json!({"resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "apikey",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "apikey", "root_id": "apikey",
                    "vm_config": {"vm_id": "apikey", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": "/opt/apikey.wasm"}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": configuration}}}}]});
        assert_eq!(parsed, expected);
        assert!(
            text.starts_with(r#"{"resources":[{"@type":"#),
            "field order as Envoy's docs write it: {text}"
        );
        assert!(text.ends_with("}\n") && text.lines().count() == 1);
    }

    #[test]
    fn the_native_ecds_document_names_the_dynamic_module_and_its_filter() {
        let configuration = r#"{"keys":[],"plans":{}}"#;
        let module = FilterModule::Native(DEFAULT_DYNAMIC_MODULE.into());
        let text = ecds_document(configuration, &module).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let expected = json!({"resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "apikey",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"name": "apikey_dynamic"},
                "filter_name": "apikey",
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": configuration}}}]});
        assert_eq!(parsed, expected);
        assert!(text.ends_with("}\n") && text.lines().count() == 1);
    }

    #[test]
    fn the_istio_plugin_carries_the_configuration_and_fails_closed() {
        let configuration = json!({"keys": [{"id": "k", "hint": "sk_live_AbC…9Mn0"}], "plans": {}});
        let text = istio_wasm_plugin(&configuration, &IstioOptions::default()).unwrap();
        assert!(text.contains("\nkind: WasmPlugin\n"), "{text}");
        assert!(text.contains("\n  phase: AUTHN\n"), "{text}");
        assert!(text.contains("\n  failStrategy: FAIL_CLOSE\n"), "{text}");
        assert!(
            text.contains("\n      \"app\": \"istio-ingressgateway\"\n"),
            "{text}"
        );
        let (_, plugin) = text.split_once("  pluginConfig:\n").unwrap();
        let object: Value = serde_json::from_str(plugin).unwrap();
        assert_eq!(object, configuration);
        assert!(
            plugin.lines().all(|line| line.starts_with("    ")),
            "{plugin}"
        );
    }

    #[test]
    fn selectors_are_label_value_pairs() {
        assert_eq!(
            parse_selector("app=gw, version=v1").unwrap(),
            [("app".into(), "gw".into()), ("version".into(), "v1".into())]
        );
        for bad in ["", "app", "=gw", "app=gw,"] {
            assert!(parse_selector(bad).is_err(), "accepted {bad:?}");
        }
    }
}
