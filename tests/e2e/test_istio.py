"""The Istio deployment's files (issue 9), checked against what they stand
for, since no Kubernetes runs here: envoy/istio/wasmplugin.yaml is what the
CLI's renderer writes (envoy/istio/render.sh), it loads in the AUTHN phase
and fails closed, its pluginConfig is a configuration real Envoy enforces,
and the EnvoyFilter's edge settings (contract §5) are those of
envoy/envoy.yaml, which scripts/test.sh validates with Envoy.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

import harness
from harness import REPO_ROOT, Gateway

ISTIO = REPO_ROOT / "envoy" / "istio"
WASM_PLUGIN = ISTIO / "wasmplugin.yaml"
EDGE_FILTER = ISTIO / "edge-envoyfilter.yaml"
# Demo keys whose SHA-256 the shipped pluginConfig (envoy/demo-config.json) holds.
PRO_KEY = "sk_live_demoPro0000000000000000"
REVOKED_KEY = "sk_live_demoRevoked00000000000"
# Contract §5: what every shipped configuration's HttpConnectionManager sets.
EDGE_SETTINGS = ("use_remote_address", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
                 "common_http_protocol_options", "max_request_headers_kb", "request_headers_timeout")


def load(path):
    with open(path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def test_the_shipped_wasmplugin_is_what_the_renderer_writes(tmp_path):
    rendered = tmp_path / "wasmplugin.yaml"
    done = subprocess.run(["bash", str(ISTIO / "render.sh"), "--out", str(rendered)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert rendered.read_text() == WASM_PLUGIN.read_text(), \
        "envoy/istio/wasmplugin.yaml is stale: run envoy/istio/render.sh"


def test_the_wasmplugin_authenticates_first_and_fails_closed():
    plugin = load(WASM_PLUGIN)
    assert (plugin["apiVersion"], plugin["kind"]) == ("extensions.istio.io/v1alpha1", "WasmPlugin")
    spec = plugin["spec"]
    assert spec["phase"] == "AUTHN"
    # FAIL_OPEN would let every request through unauthenticated whenever
    # the module cannot be fetched or started.
    assert spec["failStrategy"] == "FAIL_CLOSE"
    assert spec["url"].startswith("oci://")
    assert spec["selector"]["matchLabels"] == load(EDGE_FILTER)["spec"]["workloadSelector"]["labels"], \
        "the edge EnvoyFilter must patch the gateway the WasmPlugin runs on"


def test_the_plugin_config_is_enforced_by_real_envoy(wasm_module):
    config = load(WASM_PLUGIN)["spec"]["pluginConfig"]
    with Gateway(wasm_module, config=config) as gateway:
        allowed = gateway.request("GET", "/api/v1/leads", [("Authorization", f"Bearer {PRO_KEY}")])
        assert allowed.status == 200, allowed.body
        assert allowed.upstream is not None, "the request did not reach the upstream"
        assert dict(allowed.upstream["headers"])["x-api-key-id"] == "key_acme_pro"
        assert gateway.request("GET", "/api/v1/leads").json["error"]["code"] == "missing_credentials"
        revoked = gateway.request("GET", "/api/v1/leads", [("X-API-Key", REVOKED_KEY)])
        assert (revoked.status, revoked.json["error"]["code"]) == (401, "key_revoked")


def subset_differences(patch, shipped, path="") -> list[str]:
    """Where `patch` (a nested dict) differs from `shipped`."""
    if isinstance(patch, dict) and isinstance(shipped, dict):
        return [difference for key, value in patch.items()
                for difference in subset_differences(value, shipped.get(key), f"{path}.{key}")]
    return [] if patch == shipped else [f"{path}: patch {patch!r}, envoy.yaml {shipped!r}"]


def test_the_istio_edge_patch_carries_envoy_yamls_edge_settings():
    (patch,) = load(EDGE_FILTER)["spec"]["configPatches"]
    assert patch["patch"]["operation"] == "MERGE"
    settings = dict(patch["patch"]["value"]["typed_config"])
    manager = harness._connection_manager(harness.load_bootstrap())
    assert settings.pop("@type") == manager["@type"]
    missing = [name for name in EDGE_SETTINGS if name not in settings]
    assert not missing, f"contract §5 settings missing from the EnvoyFilter: {missing}"
    assert settings["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert subset_differences(settings, manager) == []


@pytest.mark.parametrize("name", EDGE_SETTINGS)
def test_envoy_yaml_still_has_each_edge_setting_the_patch_copies(name):
    # If envoy.yaml dropped one, the comparison above would pass vacuously.
    assert name in harness._connection_manager(harness.load_bootstrap())
