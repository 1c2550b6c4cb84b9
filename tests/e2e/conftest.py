"""Fixtures shared by the e2e tests: the built module, once per session,
and where each gateway keeps its files (pytest's tmp dir, so the logs of
the last runs stay inspectable)."""

import hashlib

import pytest

import harness


@pytest.fixture(scope="session")
def wasm_module():
    """The release filter module (built once; APIKEY_WASM overrides)."""
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
