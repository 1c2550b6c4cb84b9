"""Fixtures shared by the e2e tests: the built filter, once per session,
and where each gateway keeps its files (pytest's tmp dir, so the logs of
the last runs stay inspectable).

The suite runs against one edge per session (contract §9): `--edge wasm`
(the default) or `--edge native`, also read from APIKEY_EDGE. `module` is
that edge's build; a test of something only the Wasm module has (its OCI
image, Istio's WasmPlugin, the VM) is marked `wasm_only` and skipped on the
native edge by design, and a test of what only the native module does
(it takes `native_module`) runs on the native edge alone."""

import hashlib
import os

import pytest

import harness


def pytest_addoption(parser):
    parser.addoption("--edge", choices=sorted(harness.EDGES), default=None,
                     help="the filter build the gateways run: wasm (the proxy-wasm module) or native "
                          "(the Envoy dynamic module); default APIKEY_EDGE, else wasm")


def pytest_configure(config):
    edge = config.getoption("--edge")
    if edge:
        # The environment, not a global: the harness, and the tools tests
        # run (the CLI reads APIKEY_EDGE too), see the same edge.
        os.environ[harness.EDGE_VARIABLE] = edge
    harness.session_edge()  # an unknown APIKEY_EDGE fails here, before any test


def pytest_report_header(config):
    return f"edge: {harness.session_edge().name}"


# Tests of what only the native module does (tests/e2e/test_native_edge.py)
# take this fixture: they run in the native session.
NATIVE_ONLY_FIXTURE = "native_module"


def pytest_collection_modifyitems(config, items):
    """Wasm session: a test of the native module alone is skipped (it runs
    with --edge native). Native session: a wasm_only test is skipped, with
    its reason; a test that runs no filter (no `module` fixture: the key
    service, the CLI, the shipped files) is deselected, since the Wasm
    session ran it already and it would answer the same."""
    native = harness.session_edge() is harness.NATIVE
    selected, deselected = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        marker = item.get_closest_marker("wasm_only")
        if not native:
            if NATIVE_ONLY_FIXTURE in fixtures:
                item.add_marker(pytest.mark.skip(reason="native edge only: runs with --edge native"))
            selected.append(item)
        elif marker is not None:
            reason = marker.args[0] if marker.args else "tests the Wasm module only"
            item.add_marker(pytest.mark.skip(reason=f"wasm_only (by design on the native edge): {reason}"))
            selected.append(item)
        elif "module" in fixtures or NATIVE_ONLY_FIXTURE in fixtures:
            selected.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def module():
    """The session's edge's filter: the Wasm module (APIKEY_WASM overrides)
    or the native .so (APIKEY_NATIVE overrides), built once."""
    return harness.build_edge_module()


@pytest.fixture(scope="session")
def wasm_module():
    """The release Wasm module, whatever the edge (for wasm_only tests;
    built once; APIKEY_WASM overrides)."""
    return harness.build_module()


@pytest.fixture(scope="session", autouse=True)
def gateway_files(tmp_path_factory):
    harness.set_work_root(tmp_path_factory.mktemp("gateways"))


def sha256_hex(raw: str) -> str:
    """What a key entry's `sha256` holds: hex SHA-256 of the key's UTF-8 bytes."""
    return hashlib.sha256(raw.encode()).hexdigest()


def make_key(raw: str, **fields) -> dict:
    """A key-table entry for the raw key `raw`; fields override or add to
    the defaults (a stable id derived from the hash, tenant "test")."""
    digest = sha256_hex(raw)
    return {"id": f"key_{digest[:12]}", "sha256": digest, "tenant": "test", **fields}
