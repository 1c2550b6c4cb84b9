"""The key service (`apikey serve`, contract §8) as the tests drive it: the
real binary on a free port, its database in a scratch directory, tokens in
files, and a small HTTP client that returns status, headers and JSON.

No Envoy is needed: these tests talk to the service's API directly, and to
its database file with Python's sqlite3 (to check what is stored and what
is not).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT, GatewayError

STARTUP_SECONDS = 30
LISTENING = re.compile(r"listening on http://([0-9.]+):([0-9]+)")


@functools.cache
def apikey_binary() -> Path:
    """Builds the CLI once per session (APIKEY_CLI names a prebuilt one)."""
    override = os.environ.get("APIKEY_CLI")
    if override:
        return Path(override).resolve()
    command = ["cargo", "build", "-p", "apikey-cli"]
    built = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if built.returncode != 0:
        raise GatewayError(f"{' '.join(command)} failed:\n{built.stderr[-4000:]}")
    return REPO_ROOT / "target" / "debug" / "apikey"


def clean_env() -> dict[str, str]:
    """The environment without APIKEY_* variables a developer may have set."""
    return {name: value for name, value in os.environ.items() if not name.startswith("APIKEY_")}


def sha256_hex(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self):
        return json.loads(self.text) if self.text else None

    def error_code(self) -> str | None:
        body = self.json
        return body["error"]["code"] if isinstance(body, dict) and "error" in body else None


class KeyService:
    """One `apikey serve` process on its own database."""

    def __init__(self, workdir: Path, *extra: str, db: Path | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or workdir / "keys.db"
        self.admin_token = "adm_" + secrets.token_urlsafe(24)
        self.feed_token = "feed_" + secrets.token_urlsafe(24)
        self.admin_file = workdir / "admin.token"
        self.feed_file = workdir / "feed.token"
        self.admin_file.write_text(self.admin_token + "\n")
        self.feed_file.write_text(self.feed_token + "\n")
        self.extra = list(extra)
        self.log_path = workdir / "serve.log"
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "a")
        command = [str(apikey_binary()), "--db", str(self.db), "serve", "--listen", "127.0.0.1:0",
                   "--admin-token-file", str(self.admin_file), "--feed-token-file", str(self.feed_file),
                   *self.extra]
        self.log_offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=clean_env())
        log.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log()[self.log_offset:])
            if found:
                self.port = int(found.group(2))
                return
            if self.process.poll() is not None:
                raise GatewayError(f"apikey serve exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise GatewayError(f"apikey serve did not listen within {STARTUP_SECONDS} s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "KeyService":
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # --- HTTP ---------------------------------------------------------------

    def request(self, method: str, path: str, body=None, token: str | None = "admin",
                headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
        """`body`: bytes as they are, a str encoded, anything else as JSON.
        `token`: "admin", "feed", None (no header) or a literal header value."""
        sent = dict(headers or {})
        if token == "admin":
            sent["Authorization"] = f"Bearer {self.admin_token}"
        elif token == "feed":
            sent["Authorization"] = f"Bearer {self.feed_token}"
        elif token is not None:
            sent["Authorization"] = token
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
        finally:
            connection.close()

    def ok(self, method: str, path: str, body=None, status: int = 200):
        answer = self.request(method, path, body)
        assert answer.status == status, f"{method} {path}: {answer.status} {answer.text}"
        return answer.json

    def create(self, **fields) -> dict:
        fields.setdefault("tenant", "acme")
        return self.ok("POST", "/v1/keys", fields, status=201)

    def put_settings(self, settings: dict) -> dict:
        return self.ok("PUT", "/v1/settings", settings)

    def import_lines(self, lines: list[dict] | list[str]) -> Answer:
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        return self.request("POST", "/v1/keys/import", text, headers={"Content-Type": "application/x-ndjson"})

    def all_keys(self, tenant: str | None = None) -> list[dict]:
        records, cursor = [], None
        while True:
            query = "limit=1000" + (f"&tenant={tenant}" if tenant else "") + (f"&cursor={cursor}" if cursor else "")
            page = self.ok("GET", f"/v1/keys?{query}")
            records += page["keys"]
            cursor = page["next_cursor"]
            if not cursor:
                return records

    # --- the database file --------------------------------------------------

    def sql(self, query: str, *params):
        with sqlite3.connect(self.db, timeout=30) as connection:
            return connection.execute(query, params).fetchall()


def imported_key(index: int, tenant: str = "bulk", **fields) -> dict:
    """A §1 key object for an import, with a hash no raw key was made for."""
    digest = hashlib.sha256(f"imported-{index}-{tenant}".encode()).hexdigest()
    return {"id": f"imp_{tenant}_{index}", "sha256": digest, "tenant": tenant, **fields}
