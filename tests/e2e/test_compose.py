"""The compose demo, run for real (issue 9): envoy/docker-compose.yaml under
podman-compose, with the images envoy/images/build.sh builds locally.

One stack for the module, under its own project name and on free host
ports, so it collides with no other test or demo: it must answer 503
not_configured before any configuration (the bootstrap's default_config),
enforce a configuration renamed into the mounted ECDS directory within 1 s
of the rename (contract §4), answer the contract's 200 and 401, serve HTTPS
with the mounted certificate, send test keys to the sandbox upstream and
live keys (whatever they send) to production, write the audit feed to the
container's log, start none of the `fleet` profile's services, and leave no
container, pod or network behind after `down`.

Podman and podman-compose come from scripts/setup.d/podman.sh; without
them these tests fail, they do not skip.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import harness
from conftest import make_key
from harness import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "envoy" / "docker-compose.yaml"
BUILD_IMAGES = REPO_ROOT / "envoy" / "images" / "build.sh"
PODMAN_COMPOSE = Path(os.environ.get("PODMAN_COMPOSE") or REPO_ROOT / ".venv" / "bin" / "podman-compose")
# Lower case, digits and dashes: valid for both compose implementations.
PROJECT = f"apikey-compose-test-{os.getpid()}"
PROJECT_LABEL = f"io.podman.compose.project={PROJECT}"

KEY = "sk_live_Compose0000000000000000"
TEST_KEY = "sk_test_Compose0000000000000000"
CONFIG = {
    "keys": [make_key(KEY, id="key_compose", tenant="compose", scopes=["leads:read"], env="live"),
             make_key(TEST_KEY, id="key_compose_test", tenant="compose", scopes=["leads:read"], env="test")],
    "rules": [{"path_prefix": "/healthz", "public": True},
              {"path_prefix": "/api/v1/leads", "scope": "leads:read"}],
    "key_prefixes": ["sk_live_", "sk_test_"],
}
# Contract §4: enforced on every worker within 1 s of the update.
UPDATE_DEADLINE_S = 1.0


def run(*command: str | Path, env: dict | None = None, timeout: float = 120) -> str:
    """Runs a command, failing the test with its output when it fails."""
    done = subprocess.run([str(part) for part in command], cwd=REPO_ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


class Stack:
    """The compose project: its environment, ports and ECDS directory."""

    def __init__(self, ecds_dir: Path, module: Path):
        self.ecds_dir = ecds_dir
        self.gateway_port = harness.free_port()
        self.tls_port = harness.free_port()
        self.admin_port = harness.free_port()
        self.env = {**os.environ,
                    "APIKEY_ECDS_DIR": str(ecds_dir),
                    "APIKEY_WASM": str(module),
                    "APIKEY_TLS_DIR": str(harness.tls_certificate()[0].parent),
                    "GATEWAY_PORT": str(self.gateway_port),
                    "GATEWAY_TLS_PORT": str(self.tls_port),
                    "ADMIN_PORT": str(self.admin_port)}

    def compose(self, *args: str, timeout: float = 120) -> str:
        return run(PODMAN_COMPOSE, "-p", PROJECT, "-f", COMPOSE_FILE, *args, env=self.env, timeout=timeout)

    def logs(self, service: str = "gateway") -> str:
        """The service's container log as written (podman-compose's own
        `logs` prefixes and colours every line)."""
        names = run("podman", "ps", "-a", "--filter", f"label={PROJECT_LABEL}",
                    "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").split()
        if not names:
            return f"(no {service} container)"
        done = subprocess.run(["podman", "logs", names[0]], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def request(self, path: str, headers: dict[str, str] | None = None, port: int | None = None,
                timeout: float = 5, tls: bool = False) -> tuple[int, dict[str, str], bytes]:
        if tls:
            context = ssl.create_default_context(cafile=str(harness.tls_certificate()[0]))
            connection = http.client.HTTPSConnection("localhost", self.tls_port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", port or self.gateway_port, timeout=timeout)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def push(self, config: dict) -> float:
        """Writes `config` into the mounted ECDS directory the way a control
        plane does (temporary file, then rename) and returns the moment of
        the rename."""
        document = harness.ecds_document(harness.load_bootstrap(), config)
        harness.write_ecds(self.ecds_dir / harness.ECDS_FILE, document)
        return time.monotonic()

    def wait(self, what: str, condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}; gateway log:\n{self.logs()[-3000:]}")


def project_containers(project: str = PROJECT) -> list[str]:
    """The names of the compose project's containers, running or not."""
    return run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
               "--format", "{{.Names}}").split()


def assert_nothing_left(project: str = PROJECT) -> None:
    """No container, pod or network of the compose project survives."""
    assert project_containers(project) == [], "containers of the project survived down"
    pods = run("podman", "pod", "ps", "--filter", f"label=io.podman.compose.project={project}",
               "--format", "{{.Name}}").split()
    assert pods == [], f"pods of the project survived down: {pods}"
    networks = run("podman", "network", "ls", "--format", "{{.Name}}").split()
    assert not [n for n in networks if n.startswith(project)], f"networks survived down: {networks}"


def wait_enforced(stack: Stack, pushed_at: float, headers: dict[str, str], status: int) -> float:
    """Polls until a request answers `status`; returns seconds since the rename."""
    while True:
        answer, _, body = stack.request("/api/v1/leads", headers)
        elapsed = time.monotonic() - pushed_at
        if answer == status:
            return elapsed
        if elapsed > 5 * UPDATE_DEADLINE_S:
            pytest.fail(f"still {answer} {body[:200]!r} {elapsed:.2f} s after the rename; "
                        f"gateway log:\n{stack.logs()[-3000:]}")
        time.sleep(0.01)


def require_podman() -> None:
    """Fails (never skips) the test when Podman or podman-compose is missing."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/setup.sh (scripts/setup.d/podman.sh)")
    if not PODMAN_COMPOSE.exists():
        pytest.fail(f"{PODMAN_COMPOSE} is missing: run scripts/setup.sh (scripts/setup.d/podman.sh)")


@pytest.fixture(scope="module")
def stack(wasm_module, tmp_path_factory):
    require_podman()
    # Builds the release rate-limit server too (the fleet profile's image)
    # on a fresh clone.
    run("bash", BUILD_IMAGES, timeout=1800)
    ecds_dir = tmp_path_factory.mktemp("compose-ecds")
    # Envoy refuses to start without the file; this one means "nothing yet".
    harness.write_ecds(ecds_dir / harness.ECDS_FILE, harness.NOTHING_YET)
    stack = Stack(ecds_dir, wasm_module)
    assert not project_containers(), f"containers of {PROJECT} exist before the test"
    try:
        stack.compose("up", "-d")
        stack.wait("the admin to say LIVE",
                   lambda: stack.request("/ready", port=stack.admin_port)[2].strip() == b"LIVE")
        # Until a configuration arrives no request reaches the upstream, so
        # its readiness is read from its log, lest a slow start be counted
        # as a slow update below.
        stack.wait("the echo upstream to listen", lambda: "listening on 127.0.0.1:8080" in stack.logs("upstream"))
        stack.wait("the sandbox upstream to listen", lambda: "listening on 127.0.0.1:8090" in stack.logs("sandbox"))
        yield stack
    finally:
        # Whatever happened, nothing of this project stays running; the
        # last test checks that `down` alone achieves it.
        subprocess.run([str(PODMAN_COMPOSE), "-p", PROJECT, "-f", str(COMPOSE_FILE), "down"],
                       cwd=REPO_ROOT, env=stack.env, capture_output=True, timeout=120)


def test_before_any_configuration_the_gateway_answers_not_configured(stack):
    status, headers, body = stack.request("/api/v1/leads", {"Authorization": f"Bearer {KEY}"})
    assert status == 503, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "not_configured"


def test_a_configuration_renamed_into_the_mounted_directory_is_enforced_within_a_second(stack):
    pushed_at = stack.push(CONFIG)
    elapsed = wait_enforced(stack, pushed_at, {"Authorization": f"Bearer {KEY}"}, 200)
    print(f"configuration enforced {elapsed * 1000:.0f} ms after the rename")
    assert elapsed < UPDATE_DEADLINE_S, f"enforced after {elapsed:.2f} s"


def test_a_valid_key_reaches_the_upstream_with_its_identity_and_without_the_key(stack):
    status, headers, body = stack.request("/api/v1/leads?page=2", {"X-API-Key": KEY})
    assert status == 200, body
    assert headers.get("x-echo-upstream") == "1", "answered by something other than the echo upstream"
    echoed = json.loads(body)
    forwarded = {name.lower(): value for name, value in echoed["headers"]}
    assert echoed["path"] == "/api/v1/leads?page=2"
    assert forwarded["x-api-key-id"] == "key_compose"
    assert forwarded["x-api-tenant"] == "compose"
    assert forwarded["x-api-scopes"] == "leads:read"
    assert "x-api-key" not in forwarded, "the credential reached the upstream"
    assert KEY not in body.decode()


def test_a_test_key_reaches_the_sandbox_and_a_live_key_asking_for_it_stays_in_production(stack):
    status, headers, body = stack.request("/api/v1/leads", {"X-API-Key": TEST_KEY})
    assert (status, headers.get("x-echo-upstream")) == (200, "sandbox"), body
    status, headers, body = stack.request("/api/v1/leads", {"X-API-Key": KEY, "x-api-env": "test"})
    assert (status, headers.get("x-echo-upstream")) == (200, "1"), body
    assert dict((k.lower(), v) for k, v in json.loads(body)["headers"])["x-api-env"] == "live"


def test_https_with_the_mounted_certificate_reaches_the_upstream(stack):
    status, headers, body = stack.request("/api/v1/leads", {"X-API-Key": KEY}, tls=True)
    assert (status, headers.get("x-echo-upstream")) == (200, "1"), body
    forwarded = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert forwarded["x-forwarded-proto"] == "https"


def test_no_key_is_a_json_401_with_a_challenge(stack):
    status, headers, body = stack.request("/api/v1/leads")
    assert status == 401, body
    assert headers["content-type"] == "application/json"
    assert headers["www-authenticate"] == 'Bearer realm="api", ApiKey realm="api"'
    assert json.loads(body)["error"]["code"] == "missing_credentials"
    status, _, body = stack.request("/api/v1/leads", {"Authorization": "Bearer sk_live_Unknown000000000000000"})
    assert (status, json.loads(body)["error"]["code"]) == (401, "invalid_key")


def test_an_update_revoking_the_key_is_enforced_within_a_second(stack):
    revoked = json.loads(json.dumps(CONFIG))
    revoked["keys"][0]["revoked"] = True
    pushed_at = stack.push(revoked)
    elapsed = wait_enforced(stack, pushed_at, {"Authorization": f"Bearer {KEY}"}, 401)
    print(f"revocation enforced {elapsed * 1000:.0f} ms after the rename")
    assert elapsed < UPDATE_DEADLINE_S, f"enforced after {elapsed:.2f} s"
    status, _, body = stack.request("/api/v1/leads", {"Authorization": f"Bearer {KEY}"})
    assert (status, json.loads(body)["error"]["code"]) == (401, "key_revoked")


def audit_decisions(log: str) -> set[tuple[str | None, str]]:
    """(key id, decision) of every JSON access-log line's audit record."""
    decisions = set()
    for line in log.splitlines():
        if line.startswith("{") and '"apikey"' in line:
            record = json.loads(line)["apikey"]
            if record not in ("-", None):
                audit = json.loads(record)
                decisions.add((audit["key_id"], audit["decision"]))
    return decisions


def test_the_container_log_carries_the_json_audit_feed(stack):
    # The access log is the container's standard output (envoy/envoy.yaml),
    # flushed once a second (the compose file's --file-flush-interval-msec).
    expected = {("key_compose", "allowed"), ("key_compose", "key_revoked"), (None, "missing_credentials")}
    stack.wait("the audit records of the requests sent",
               lambda: expected <= audit_decisions(stack.logs()), timeout=10)


def test_without_the_fleet_profile_only_the_gateway_and_its_upstreams_run(stack):
    # The fleet profile's services (envoy/docker-compose.yaml) start only
    # with --profile fleet; the demo is the gateway and its two upstreams.
    services = run("podman", "ps", "-a", "--filter", f"label={PROJECT_LABEL}",
                   "--format", '{{ index .Labels "com.docker.compose.service" }}').split()
    assert sorted(services) == ["gateway", "sandbox", "upstream"], services


def test_down_leaves_nothing_running(stack):
    assert project_containers(), "the stack is not running before down"
    started = time.monotonic()
    stack.compose("down", timeout=120)
    took = time.monotonic() - started
    print(f"down took {took:.1f} s")
    assert_nothing_left()
    with pytest.raises(OSError):
        stack.request("/healthz", timeout=1)
    # Both containers stop on their stop signal; one waiting out the 10 s
    # stop timeout (a PID 1 that ignores SIGTERM) would show here.
    assert took < 8, f"down took {took:.1f} s"
