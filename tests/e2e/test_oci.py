"""The Istio module image (issue 9): envoy/istio/package-oci.sh packages the
built module, pushes it to a real OCI registry on loopback (Debian's
docker-registry, the CNCF distribution registry, run as a process), and a
standard client (skopeo) pulls it back: the Wasm layer must be the module
byte for byte, the media types and layer count those Istio's image fetcher
reads (the Wasm image specification's "oci" variant), and the digest the
script prints the one the registry serves, so a WasmPlugin can pin it.

docker-registry and skopeo come from scripts/setup.d/podman.sh; without
them these tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

import harness
from harness import REPO_ROOT

pytestmark = pytest.mark.wasm_only("the OCI image Istio pulls holds the Wasm module")

PACKAGE = REPO_ROOT / "envoy" / "istio" / "package-oci.sh"
REGISTRY_BINARY = Path("/usr/bin/docker-registry")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
WASM_CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"


def run(*command: str | Path, timeout: float = 120) -> str:
    done = subprocess.run([str(part) for part in command], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A docker-registry process on a free loopback port, storing into a
    temporary directory; yields HOST:PORT."""
    for tool in (REGISTRY_BINARY, shutil.which("skopeo")):
        if tool is None or not Path(tool).exists():
            pytest.fail(f"{tool or 'skopeo'} is missing: run scripts/setup.sh (scripts/setup.d/podman.sh)")
    root = tmp_path_factory.mktemp("registry")
    port = harness.free_port()
    config = root / "config.yml"
    # Plain HTTP on loopback: clients are told so (--insecure, tls-verify=false).
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = open(root / "registry.log", "w")
    process = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"docker-registry exited {process.returncode}:\n{(root / 'registry.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry never answered on {address}")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def package(module: Path, layout: Path, tag: str, *push: str) -> str:
    """Runs package-oci.sh; returns the manifest digest it printed."""
    output = run("bash", PACKAGE, "--wasm", module, "--layout", layout, "--tag", tag, *push)
    digests = {word for word in output.split() if word.startswith("sha256:")}
    assert len(digests) == 1, f"expected one digest in:\n{output}"
    return digests.pop()


def read_layout(layout: Path) -> tuple[bytes, dict, Callable[[str], bytes]]:
    """The manifest (bytes and parsed) of the only image in an OCI layout,
    and a reader of its blobs that checks each blob's digest."""
    def blob(digest: str) -> bytes:
        algorithm, hex_digest = digest.split(":")
        data = (layout / "blobs" / algorithm / hex_digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} does not match its digest"
        return data

    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1, index
    raw = blob(index["manifests"][0]["digest"])
    return raw, json.loads(raw), blob


def test_the_image_round_trips_through_a_registry_byte_identical(registry, wasm_module, tmp_path):
    reference = f"docker://{registry}/apikey/apikey-filter:e2e"
    digest = package(wasm_module, tmp_path / "built", "e2e", "--push", reference, "--insecure")

    # Pulled back by a standard client into a fresh layout, by tag.
    run("skopeo", "copy", "--quiet", "--src-tls-verify=false", reference, f"oci:{tmp_path / 'pulled'}:e2e")
    raw, manifest, blob = read_layout(tmp_path / "pulled")
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == digest, "the registry serves another manifest"

    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == WASM_CONFIG_TYPE
    runtime = json.loads(blob(manifest["config"]["digest"]))
    assert runtime["type"] == "envoy_proxy"
    assert runtime["config"]["root_ids"] == ["apikey"]
    assert runtime["abiVersions"] and all(v.startswith("proxy_abi_version_") for v in runtime["abiVersions"])

    # Istio's fetcher, "oci" variant: exactly two layers, the module being
    # the one of the Wasm content type, raw (not compressed, not in a tar).
    layer_types = [layer["mediaType"] for layer in manifest["layers"]]
    assert sorted(layer_types) == sorted([WASM_CONFIG_TYPE, WASM_LAYER_TYPE]), layer_types
    (wasm_layer,) = [layer for layer in manifest["layers"] if layer["mediaType"] == WASM_LAYER_TYPE]
    assert blob(wasm_layer["digest"]) == wasm_module.read_bytes(), "the pulled layer is not the module"
    assert wasm_layer["size"] == wasm_module.stat().st_size


def test_the_digest_pins_the_image_in_the_registry(registry, wasm_module, tmp_path):
    reference = f"docker://{registry}/apikey/apikey-filter:pinned"
    digest = package(wasm_module, tmp_path / "built", "pinned", "--push", reference, "--insecure")
    # What a WasmPlugin's `url: oci://HOST/REPO@sha256:...` resolves to.
    by_digest = run("skopeo", "inspect", "--raw", "--tls-verify=false",
                    f"docker://{registry}/apikey/apikey-filter@{digest}")
    assert f"sha256:{hashlib.sha256(by_digest.encode()).hexdigest()}" == digest
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{registry}/v2/apikey/apikey-filter/manifests/pinned",
            headers={"Accept": MANIFEST_TYPE}), timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == digest
        assert answer.headers["Content-Type"] == MANIFEST_TYPE


def test_packaging_is_reproducible(wasm_module, tmp_path):
    first = package(wasm_module, tmp_path / "one", "same")
    second = package(wasm_module, tmp_path / "two", "same")
    assert first == second, "the same module gave two digests: a pinned WasmPlugin could never match a rebuild"
    # A different module is a different image.
    changed = tmp_path / "changed.wasm"
    changed.write_bytes(wasm_module.read_bytes() + b"\0custom\0")
    assert package(changed, tmp_path / "three", "same") != first


def test_a_file_that_is_not_a_proxy_wasm_module_is_refused(tmp_path):
    not_wasm = tmp_path / "not.wasm"
    not_wasm.write_bytes(b"#!/bin/sh\necho not a module\n")
    done = subprocess.run(["bash", str(PACKAGE), "--wasm", str(not_wasm), "--layout", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout
    assert "not a Wasm module" in done.stderr
    assert not (tmp_path / "out").exists(), "a refused module left an image layout behind"
