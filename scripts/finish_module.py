#!/usr/bin/env python3
"""Finishes the filter module cargo built: drops the proxy-wasm callbacks
the filter never uses from its exports, then lets wasm-opt remove the code
only they reached and optimise the rest.

Why: the SDK exports every proxy-wasm callback, and Envoy calls each
exported one (request and response bodies, trailers, the access-log
callback, on_done) on every request, even when it does nothing. Envoy skips
callbacks a module does not export (platform notes), so dropping them
saves a VM entry per body chunk and per request. Each name below is one the
filter has no hook for; the SDK's defaults for them only continue.

    finish_module.py MODULE        # rewrites MODULE in place

Pure Python (no packages) for the export section; wasm-opt comes from
Debian's binaryen (scripts/setup.sh installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Callbacks the filter does not implement. Kept: the VM, configuration,
# context lifecycle (on_context_create, on_delete: the SDK frees a
# context's state there), request and response headers, tick, memory
# allocation, the gRPC reply callbacks of the fleet's rate-limit call, and
# the HTTP callout's answer (the key_source feed).
UNUSED_EXPORTS = frozenset({
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
})

# The features Rust's wasm32-wasip1 target emits; wasm-opt must not use more.
WASM_OPT_FEATURES = (
    "--enable-bulk-memory", "--enable-sign-ext", "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int", "--enable-multivalue", "--enable-reference-types",
)
EXPORT_SECTION = 7
MAGIC = b"\0asm\1\0\0\0"


def read_leb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def without_exports(module: bytes, unused: frozenset[str]) -> tuple[bytes, list[str]]:
    """The module with the named exports removed, and the names removed."""
    if not module.startswith(MAGIC):
        raise ValueError("not a WebAssembly 1.0 module")
    out = bytearray(MAGIC)
    removed: list[str] = []
    at = len(MAGIC)
    while at < len(module):
        section_id = module[at]
        size, body_at = read_leb(module, at + 1)
        body = module[body_at:body_at + size]
        if section_id == EXPORT_SECTION:
            count, cursor = read_leb(body, 0)
            kept = []
            for _ in range(count):
                start = cursor
                length, cursor = read_leb(body, cursor)
                name = body[cursor:cursor + length].decode()
                cursor += length + 1  # the name, then the kind byte
                _, cursor = read_leb(body, cursor)
                if name in unused:
                    removed.append(name)
                else:
                    kept.append(body[start:cursor])
            body = leb(len(kept)) + b"".join(kept)
        out += bytes([section_id]) + leb(len(body)) + body
        at = body_at + size
    return bytes(out), removed


def finish(path: Path) -> None:
    stripped, removed = without_exports(path.read_bytes(), UNUSED_EXPORTS)
    wasm_opt = shutil.which("wasm-opt")
    if wasm_opt is None:
        sys.exit("wasm-opt not found: run scripts/setup.sh (it installs Debian's binaryen)")
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "in.wasm"
        target = Path(scratch) / "out.wasm"
        source.write_bytes(stripped)
        subprocess.run([wasm_opt, *WASM_OPT_FEATURES, "-O3", "--strip-debug", "--strip-producers",
                        str(source), "-o", str(target)], check=True)
        # A new file, not a write through cargo's hard link into deps/.
        finished = path.with_suffix(".wasm.tmp")
        shutil.copyfile(target, finished)
        os.replace(finished, path)
    print(f"{path.name}: {len(removed)} unused callbacks dropped, {path.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    finish(Path(sys.argv[1]))
