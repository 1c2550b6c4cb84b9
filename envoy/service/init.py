"""The compose stack's one-shot start-up job (envoy/docker-compose.yaml,
service `apikey-init`): it waits for `apikey serve`, seeds an empty
service through its API, and points the gateway at the service.

1. Waits (up to --wait seconds) for the service's /healthz.
2. Seeds it, only when it holds no settings and no keys (the first start
   on a new volume): PUT /v1/settings with the seed configuration's
   settings (a contract §1 configuration without `keys`), then
   POST /v1/keys/import with its keys (hashes only, never raw keys).
   A service that already holds either is left as it is, so a restart
   never brings back a key an operator revoked or undoes a settings change.
3. Writes the gateway's ECDS file: a filter configuration holding only
   `key_source` (contract §8.3) with the feed token read from its compose
   secret, written beside the file and renamed over it (what Envoy's
   watched directory needs). Rewritten on every start, so a rotated feed
   token reaches the gateway with the next `up`.

The tokens come from files (compose secrets under /run/secrets/), never
from the command line or the environment, and are never printed.
Standard library only: it runs in any image with python3 (the stack's
localhost/apikey-python:3, or python:3.12-slim). scripts/demo.sh runs it
on the host the same way, against the `apikey serve` it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The Wasm filter of envoy/envoy.yaml's `default_config` (module, root id,
# VM id, runtime): the ECDS resource must name the same ones, or Envoy
# would start a second VM. tests/e2e/test_compose.py checks that this
# equals what tests/e2e/harness.py derives from envoy/envoy.yaml.
MODULE = "target/wasm32-wasip1/release/apikey_filter.wasm"
FILTER_NAME = "apikey"


def ecds_document(configuration: dict, module: str = MODULE) -> dict:
    """The DiscoveryResponse Envoy's path_config_source reads: the apikey
    filter (the module at `module`, as the bootstrap's default_config
    names it) with `configuration` as its plugin configuration."""
    wasm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": FILTER_NAME,
            "root_id": FILTER_NAME,
            "vm_config": {
                "vm_id": FILTER_NAME,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": module}},
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": json.dumps(configuration),
            },
            "fail_open": False,
        },
    }
    return {"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": FILTER_NAME,
        "typed_config": wasm,
    }]}


def key_source(cluster: str, token: str, authority: str) -> dict:
    """The gateway's whole filter configuration: follow the service."""
    return {"key_source": {"cluster": cluster, "token": token, "authority": authority}}


def read_token(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        sys.exit(f"apikey-init: {path} is empty (run envoy/service/token-secrets.sh)")
    return token


class Service:
    """The key service's management API, with the admin token."""

    def __init__(self, url: str, admin_token: str):
        self.url = url.rstrip("/")
        self.admin_token = admin_token

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={
            "Authorization": f"Bearer {self.admin_token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def ok(self, method: str, path: str, body: bytes | None = None,
           content_type: str = "application/json") -> dict:
        status, answer = self.call(method, path, body, content_type)
        if status != 200:
            # The service's error bodies hold no token and no raw key.
            sys.exit(f"apikey-init: {method} {path} answered {status}: {answer[:500].decode(errors='replace')}")
        return json.loads(answer)

    def wait_healthy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                sys.exit(f"apikey-init: {self.url}/healthz did not answer 200 within {seconds:.0f} s")
            time.sleep(0.2)


def seed(service: Service, seed_file: Path) -> str:
    """Seeds an empty service from a §1 configuration; says what it did."""
    settings = service.ok("GET", "/v1/settings")
    keys = service.ok("GET", "/v1/keys?limit=1")["keys"]
    if settings or keys:
        return "the service already holds settings or keys: not seeded"
    configuration = json.loads(seed_file.read_text(encoding="utf-8"))
    seed_keys = configuration.pop("keys", [])
    service.ok("PUT", "/v1/settings", json.dumps(configuration).encode())
    if seed_keys:
        lines = "".join(json.dumps(key) + "\n" for key in seed_keys).encode()
        service.ok("POST", "/v1/keys/import", lines, "application/x-ndjson")
    return f"seeded the settings and {len(seed_keys)} keys of {seed_file.name}"


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Temporary file, then rename: Envoy's watched directory reacts to the
    rename and never reads half a file. The file holds the feed token, so
    it is made with `mode` from the start, never readable by more."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(temporary, mode)  # whatever the umask took away
    os.replace(temporary, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the service's URL, e.g. http://apikey-service:8470")
    parser.add_argument("--admin-token-file", type=Path, default=Path("/run/secrets/apikey-admin-token"),
                        help="read only with --seed")
    parser.add_argument("--feed-token-file", type=Path, default=Path("/run/secrets/apikey-feed-token"))
    parser.add_argument("--seed", type=Path, help="a §1 configuration whose settings and keys seed an empty service")
    parser.add_argument("--ecds", type=Path, required=True, help="the gateway's ECDS file to write")
    parser.add_argument("--cluster", default="apikey_control", help="the gateway's cluster reaching the service")
    parser.add_argument("--authority", default="apikey-service", help="the :authority of the gateway's feed requests")
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for the service")
    parser.add_argument("--module", default=MODULE,
                        help=f"the module's path as the bootstrap's default_config names it (default {MODULE})")
    # 0644 in the compose stack: the official Envoy image runs as its own
    # user, which must read the file, and the volume holding it is
    # reachable only by root on the host. scripts/demo.sh asks for 0600.
    parser.add_argument("--file-mode", type=lambda text: int(text, 8), default=0o644,
                        help="the ECDS file's permissions, in octal (default 0644)")
    args = parser.parse_args(argv)

    # The admin token only to seed: pointing a gateway at the service needs the feed token alone.
    service = Service(args.server, read_token(args.admin_token_file) if args.seed is not None else "")
    feed_token = read_token(args.feed_token_file)
    service.wait_healthy(args.wait)
    if args.seed is not None:
        print(f"apikey-init: {seed(service, args.seed)}", flush=True)
    document = ecds_document(key_source(args.cluster, feed_token, args.authority), args.module)
    write_atomically(args.ecds, json.dumps(document), args.file_mode)
    print(f"apikey-init: the gateway follows {args.server} (cluster {args.cluster}) through {args.ecds}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
