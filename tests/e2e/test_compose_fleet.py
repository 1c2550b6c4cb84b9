"""The compose demo's `fleet` profile, run for real (issue 10): two gateways,
a replica of apikey-ratelimit in each one's network namespace and one Redis,
under podman-compose with the images envoy/images/build.sh builds locally.

A key limited to N requests per window, asked 2N times alternately through
the two gateways, is admitted exactly N times: each gateway's local bucket
would admit N on its own, so the count is the fleet's. Every 200 comes
from the gateway's own echo upstream, every refusal is the contract's 429
(body, Retry-After, RateLimit and RateLimit-Policy), and each gateway asked
its replica about each of its N requests without a failure. The configuration
says `on_failure: deny`, so a gateway that could not reach its rate-limit
service (or the service its Redis) would answer 503, never pass as a
success. The configuration is renamed into the fleet's own ECDS directory
once both gateways run, as an operator would push it: both enforce it, and
the demo gateway, which follows the key service instead, never sees it.
`down -v` leaves nothing of the project behind.

Redis requires the password envoy/fleet/redis-secret.sh writes (issue 17):
from the project network, a client without it is refused (NOAUTH), and the
password is in no container's command, environment or log.

Podman and podman-compose come from scripts/setup.d/podman.sh; without
them these tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import REPO_ROOT
from test_compose import (BUILD_IMAGES, COMPOSE_FILE, PODMAN_COMPOSE, assert_nothing_left, compose_down,
                          project_containers, project_volumes, require_podman, run, service_secrets)

pytestmark = pytest.mark.wasm_only("the compose fleet's gateway image runs the Wasm module")

PROJECT = f"apikey-fleet-test-{os.getpid()}"
LIMITED_KEY = "sk_live_FleetLimited000000000000"
READY_KEY = "sk_live_FleetReady00000000000000"
N = 10
# An hour's window: the requests below take seconds, so they straddle a
# window edge only when started in the hour's last seconds (avoided below).
PERIOD = 3600


def key(raw: str, key_id: str, requests: int) -> dict:
    return {"id": key_id, "sha256": hashlib.sha256(raw.encode()).hexdigest(), "tenant": "fleet",
            "rate_limits": {"*": {"requests": requests, "period_seconds": PERIOD}}}


CONFIG = {
    "keys": [key(LIMITED_KEY, "key_fleet_limited", N), key(READY_KEY, "key_fleet_ready", 100_000)],
    "fleet": {"cluster": "ratelimit", "domain": "apikey", "timeout_ms": 1000, "on_failure": "deny"},
}


class FleetStack:
    """The compose project with the fleet profile, on free host ports."""

    def __init__(self, fleet_ecds: os.PathLike, module: os.PathLike, secrets: Path, service_secrets: Path):
        self.ports = {name: harness.free_port() for name in
                      ("GATEWAY_PORT", "GATEWAY_TLS_PORT", "ADMIN_PORT", "APIKEY_SERVICE_PORT", "FLEET_A_PORT",
                       "FLEET_B_PORT", "FLEET_A_ADMIN_PORT", "FLEET_B_ADMIN_PORT")}
        # The demo gateway and the key service it follows run beside the
        # fleet (they have no profile): they need the service's tokens.
        self.env = {**os.environ, "APIKEY_FLEET_ECDS_DIR": str(fleet_ecds),
                    "APIKEY_FLEET_SECRETS_DIR": str(secrets), "APIKEY_SERVICE_SECRETS_DIR": str(service_secrets),
                    "APIKEY_WASM": str(module),
                    # Every gateway's bootstrap has the HTTPS listener: the session's certificate.
                    "APIKEY_TLS_DIR": str(harness.tls_certificate()[0].parent),
                    **{name: str(port) for name, port in self.ports.items()}}
        self.redis_password = (secrets / "redis-password").read_text().strip()
        self.gateways = [self.ports["FLEET_A_PORT"], self.ports["FLEET_B_PORT"]]
        self.admins = [self.ports["FLEET_A_ADMIN_PORT"], self.ports["FLEET_B_ADMIN_PORT"]]

    def compose(self, *args: str, timeout: float = 120) -> str:
        return run(PODMAN_COMPOSE, "-p", PROJECT, "--profile", "fleet", "-f", COMPOSE_FILE, *args,
                   env=self.env, timeout=timeout)

    @staticmethod
    def container(service: str) -> str:
        """The name of the service's container."""
        names = run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
                    "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").split()
        assert len(names) == 1, f"{service}: containers {names}"
        return names[0]

    def logs(self) -> str:
        names = project_containers(PROJECT)
        out = []
        for name in names:
            if "gateway-" in name or "ratelimit" in name or "redis" in name:
                done = subprocess.run(["podman", "logs", "--tail", "15", name], capture_output=True, text=True,
                                      timeout=60)
                out.append(f"--- {name}\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    @staticmethod
    def request(port: int, path: str, raw_key: str | None = None,
                timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of a GET."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {raw_key}"} if raw_key else {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def get(self, port: int, path: str, raw_key: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
        status, _, body = self.request(port, path, raw_key, timeout)
        return status, body

    def wait_for(self, port: int, raw_key: str, status: int, code: str | None, timeout: float) -> None:
        """Waits until the gateway on `port` answers `status` (and the error
        `code`, when given) for a request with `raw_key`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, body = self.get(port, "/api/v1/leads", raw_key)
            except OSError as error:
                got, body = 0, str(error).encode()
            if got == status and (code is None or error_code(body) == code):
                return
            if time.monotonic() > deadline:
                wanted = f"{status} {code}" if code else str(status)
                pytest.fail(f"gateway :{port} answers {got} {body[:300]!r}, not {wanted}, after {timeout} s\n"
                            f"{self.logs()}")
            time.sleep(0.1)

    def fleet_stats(self, name: str) -> list[int]:
        """The filter's counter `apikey.fleet.<name>` on each fleet gateway."""
        counts = []
        for admin in self.admins:
            _, body = self.get(admin, f"/stats?filter=apikey.fleet.{name}$")
            counts.append(sum(int(line.rsplit(":", 1)[1]) for line in body.decode().splitlines() if ":" in line))
        return counts


def error_code(body: bytes) -> str | None:
    """The contract's error code in a body, None when the body has none
    (Envoy's own plain-text 503 while it starts)."""
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


@pytest.fixture(scope="module")
def fleet(wasm_module, tmp_path_factory):
    require_podman()
    run("bash", BUILD_IMAGES, timeout=1800)  # builds the release rate-limit server on a fresh clone
    fleet_ecds = tmp_path_factory.mktemp("fleet-ecds")
    # Envoy does not start without the file; this one means "nothing yet".
    harness.write_ecds(fleet_ecds / harness.ECDS_FILE, harness.NOTHING_YET)
    secrets = tmp_path_factory.mktemp("fleet") / "secrets"
    run("bash", REPO_ROOT / "envoy" / "fleet" / "redis-secret.sh", secrets)
    stack = FleetStack(fleet_ecds, wasm_module, secrets, service_secrets(secrets.parent / "service-secrets"))
    assert not project_containers(PROJECT), f"containers of {PROJECT} exist before the test"
    try:
        stack.compose("up", "-d", timeout=300)
        for port in stack.gateways:
            stack.wait_for(port, READY_KEY, 503, "not_configured", timeout=60)
        # Temporary file, then rename: what the CLI and write-ecds do.
        harness.write_ecds(fleet_ecds / harness.ECDS_FILE, harness.ecds_document(harness.load_bootstrap(), CONFIG))
        # 200 for a key the fleet must be asked about proves the whole
        # path: the watched directory, the filter's configuration, the
        # server beside each gateway and Redis (with on_failure deny, any
        # broken link answers 503).
        for port in stack.gateways:
            stack.wait_for(port, READY_KEY, 200, None, timeout=15)
        yield stack
    finally:
        compose_down(stack.env, PROJECT, "--profile", "fleet")


def test_two_gateways_admit_exactly_n_of_2n_requests(fleet):
    remaining = PERIOD - time.time() % PERIOD
    if remaining < 30:
        time.sleep(remaining + 1)
    names = ("calls", "over_limit", "failures", "timeouts")
    before = {name: fleet.fleet_stats(name) for name in names}
    answers = []
    for i in range(2 * N):
        port = fleet.gateways[i % 2]
        answers.append((port, *fleet.request(port, "/api/v1/leads", LIMITED_KEY)))
    seconds_left = PERIOD - time.time() % PERIOD
    admitted = [a for a in answers if a[1] == 200]
    limited = [a for a in answers if a[1] == 429]
    assert len(admitted) == N and len(limited) == N, \
        f"{len(admitted)} admitted, {len(limited)} limited, others {[a for a in answers if a[1] not in (200, 429)]}"
    assert {port for port, *_ in admitted} == set(fleet.gateways), "one gateway admitted everything"
    for port, _, headers, body in admitted:
        assert headers.get("x-echo-upstream") == "1", f":{port} answered 200 without its echo upstream: {body[:200]!r}"
    # The contract's 429 (§3), as a fleet OVER_LIMIT gives it (§6): the
    # seconds left in the server's hour window, rounded up, as retry_after
    # (the containers read the host's clock; the requests take well under
    # a second).
    for port, _, headers, body in limited:
        error = json.loads(body)["error"]
        retry_after = error["retry_after"]
        assert (error["code"], error["scope"]) == ("rate_limited", "*"), (port, error)
        assert abs(retry_after - math.ceil(seconds_left)) <= 2, (port, retry_after, seconds_left)
        assert headers["content-type"] == "application/json", (port, headers)
        assert headers.get("retry-after") == str(retry_after), (port, headers)
        assert headers.get("ratelimit") == f'"*";r=0;t={retry_after}', (port, headers)
        assert headers.get("ratelimit-policy") == f'"*";q={N};w={PERIOD}', (port, headers)
    # Each gateway's local bucket (burst N) admitted all N of its requests
    # and asked the replica beside it about each; the replicas, counting in
    # the one Redis, turned N of the 2N down, and nothing failed.
    after = {name: fleet.fleet_stats(name) for name in names}
    delta = {name: [a - b for a, b in zip(after[name], before[name])] for name in names}
    assert delta["calls"] == [N, N], delta
    assert sum(delta["over_limit"]) == N, delta
    assert delta["failures"] == [0, 0] and delta["timeouts"] == [0, 0], delta


def test_the_demo_gateway_never_sees_the_fleets_configuration(fleet):
    # It follows the key service, which holds the demo keys, not the fleet's.
    fleet.wait_for(fleet.ports["GATEWAY_PORT"], "sk_live_demoPro0000000000000000", 200, None, timeout=30)
    status, body = fleet.get(fleet.ports["GATEWAY_PORT"], "/api/v1/leads", READY_KEY)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_key", (status, body[:300])


# From inside the fleet's network (the echo upstream shares gateway A's
# network namespace and has python3): commands to Redis without the
# password, then with it (read on standard input, not put on a command line).
REDIS_CLIENT = r"""
import socket, sys
password = sys.stdin.read().strip()
def ask(*lines):
    with socket.create_connection(("redis", 6379), timeout=5) as sock:
        sock.sendall(b"".join(line.encode() + b"\r\n" for line in lines))
        data = b""
        while data.count(b"\r\n") < len(lines):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().split("\r\n")[len(lines) - 1]
print(ask("PING"))
print(ask("FLUSHALL"))
print(ask("AUTH " + password, "PING"))
"""


def test_redis_refuses_a_client_without_the_password(fleet):
    done = subprocess.run(["podman", "exec", "-i", fleet.container("upstream-a"), "python3", "-c", REDIS_CLIENT],
                          input=fleet.redis_password, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ping, flushall, authenticated = done.stdout.splitlines()
    assert ping.startswith("-NOAUTH"), f"PING without the password answered {ping!r}"
    assert flushall.startswith("-NOAUTH"), f"FLUSHALL without the password answered {flushall!r}"
    assert authenticated == "+PONG", f"PING with the password answered {authenticated!r}"


def test_the_password_is_in_no_containers_command_environment_or_log(fleet):
    names = project_containers(PROJECT)
    inspected = run("podman", "inspect", *names)
    assert fleet.redis_password not in inspected, "the Redis password is in a container's configuration"
    for name in names:
        done = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60)
        assert fleet.redis_password not in done.stdout + done.stderr, f"the Redis password is in {name}'s log"
    redis = json.loads(run("podman", "inspect", fleet.container("redis")))[0]
    assert not redis["NetworkSettings"]["Ports"] or not any(redis["NetworkSettings"]["Ports"].values()), \
        f"Redis publishes a port: {redis['NetworkSettings']['Ports']}"


def test_down_leaves_nothing_running(fleet):
    assert len(project_containers(PROJECT)) == 12, \
        "the fleet profile runs 12 containers (the key service, its init job and the demo's 3, the fleet's 7)"
    fleet.compose("down", "-v", timeout=120)
    assert_nothing_left(PROJECT)
    assert project_volumes(PROJECT) == [], "down -v left volumes behind"
