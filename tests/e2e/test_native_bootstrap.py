"""The native edge's shipped files stay in step with the Wasm edge's
(contract §9): envoy/envoy-native.yaml is envoy/envoy.yaml with only the
`apikey` filter (a dynamic-module filter in place of the Wasm one) and the
metrics namespace its stats tag names changed, so a setting added to one
bootstrap and not the other fails here; and the CLI's ECDS file (`apikey
--edge native`) carries the filter the native bootstrap
loads, as the harness writes it.

No Envoy runs here: each edge's e2e session runs its bootstrap for real
(`--edge native` runs envoy/envoy-native.yaml), and scripts/test.sh
validates both with Envoy.
"""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

import harness
from key_service import apikey_binary, clean_env

NATIVE_DEFAULT_CONFIG = {
    "@type": harness.DYNAMIC_MODULE_FILTER_TYPE,
    "dynamic_module_config": {"name": "apikey_dynamic"},
    "filter_name": harness.FILTER_NAME,
    "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ""},
}


def nativized(wasm_bootstrap: dict) -> dict:
    """What envoy/envoy-native.yaml must be: the Wasm bootstrap with the
    dynamic-module filter and its metrics namespace, nothing else."""
    bootstrap = copy.deepcopy(wasm_bootstrap)
    discovery = harness._apikey_discovery(bootstrap)
    discovery["default_config"] = copy.deepcopy(NATIVE_DEFAULT_CONFIG)
    discovery["type_urls"] = [harness.DYNAMIC_MODULE_FILTER_TYPE]
    for tag in bootstrap["stats_config"]["stats_tags"]:
        tag["regex"] = tag["regex"].replace(r"^wasmcustom\.", r"^dynamicmodulescustom\.")
    return bootstrap


def test_the_native_bootstrap_is_envoy_yaml_with_the_dynamic_module_filter():
    wasm = harness.load_bootstrap(harness.BOOTSTRAP)
    native = harness.load_bootstrap(harness.NATIVE_BOOTSTRAP)
    expected = nativized(wasm)
    assert native == expected, (
        "envoy/envoy-native.yaml drifted from envoy/envoy.yaml: apart from the apikey filter and the "
        "metrics namespace they must be the same file; differing top-level sections: "
        f"{sorted(key for key in expected.keys() | native.keys() if expected.get(key) != native.get(key))}")


def test_the_stats_tag_rewrite_changed_something():
    # If envoy.yaml's tag stopped naming wasmcustom, the comparison above
    # would pass with the native file's tag naming the Wasm namespace.
    regexes = [tag["regex"] for tag in harness.load_bootstrap(harness.NATIVE_BOOTSTRAP)["stats_config"]["stats_tags"]]
    assert any(regex.startswith(r"^dynamicmodulescustom\.apikey\.") for regex in regexes), regexes


@pytest.mark.parametrize("edge", [harness.WASM, harness.NATIVE], ids=lambda edge: edge.name)
def test_each_bootstrap_names_its_edge(edge):
    assert harness.bootstrap_edge(harness.load_bootstrap(edge.bootstrap)) is edge


# The module each edge's CLI options name, as the shipped bootstraps do.
SHIPPED_MODULES = {"wasm": harness.REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "apikey_filter.wasm",
                   "native": harness.REPO_ROOT / "target" / "release" / "libapikey_dynamic.so"}


def cli_ecds(tmp_path, edge: harness.Edge) -> dict:
    """The ECDS document `apikey render ecds` writes for a fresh database."""
    db = tmp_path / f"{edge.name}.db"
    base = [str(apikey_binary()), "--db", str(db), *harness.cli_filter_args(SHIPPED_MODULES[edge.name])]
    subprocess.run([*base, "init"], check=True, capture_output=True, env=clean_env(), timeout=30)
    rendered = subprocess.run([*base, "render", "ecds"], check=True, capture_output=True, env=clean_env(), timeout=30)
    return json.loads(rendered.stdout)


@pytest.mark.parametrize("edge", [harness.WASM, harness.NATIVE], ids=lambda edge: edge.name)
def test_the_clis_ecds_file_carries_the_filter_the_bootstrap_loads(tmp_path, edge):
    written = cli_ecds(tmp_path, edge)
    configuration = harness.filter_configuration(written["resources"][0]["typed_config"])
    bootstrap = harness.load_bootstrap(edge.bootstrap)
    if edge is harness.WASM:  # the CLI was given the absolute path; the shipped one is relative
        default = harness._apikey_discovery(bootstrap)["default_config"]
        default["config"]["vm_config"]["code"]["local"]["filename"] = str(SHIPPED_MODULES["wasm"])
        assert default["config"].pop("fail_open") is False  # protobuf's default: the CLI leaves it out
    options = " ".join(harness.cli_filter_args(SHIPPED_MODULES[edge.name]))
    assert written == harness.ecds_document(bootstrap, configuration), \
        f"apikey {options} writes another filter than {edge.bootstrap.name} loads"


def test_the_documented_scrape_rule_is_the_one_the_native_tests_apply():
    readme = (harness.REPO_ROOT / "envoy" / "observability" / "README.md").read_text(encoding="utf-8")
    assert f"regex: {harness.NATIVE.prometheus_relabel}\n" in readme, \
        "envoy/observability/README.md's metric_relabel_configs rule is not harness.NATIVE.prometheus_relabel"
    assert harness.WASM.prometheus_relabel is None
