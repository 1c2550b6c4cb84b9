"""Fleet-wide limits (contract §6, issue 10) in real Envoy: two gateways
(--concurrency 2 each) asking the project's rate-limit server, which counts
in a real redis-server.

Limits are per hour (period 3600), and a test that counts starts clear of
the hour's edge, so no window closes under it. Each test uses its own key
id, so tests sharing the module's Redis never share a counter.

Redis requires a password (issue 17): the servers read it from a file, a
client without it is refused, and the password shows on no command line
and in no log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import math
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fleet_services import RateLimitServer, Redis, SilentListener, build_ratelimit
from harness import Gateway, free_port

PERIOD = 3600
FLEET_STATS = "apikey.fleet."  # the filter's metrics (Gateway.metrics)


@pytest.fixture(scope="session")
def ratelimit_binary():
    return build_ratelimit()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with Redis(tmp_path_factory.mktemp("redis")) as redis:
        yield redis


@pytest.fixture
def server_factory(ratelimit_binary, redis, tmp_path):
    """Starts rate-limit servers on the module's Redis; stops them after
    the test (SIGTERM) and checks that each one exited cleanly."""
    servers = []

    def start(redis_url: str | None = None, port: int = 0, password_file: Path | None = None,
              no_auth: bool = False) -> RateLimitServer:
        server = RateLimitServer(ratelimit_binary, redis_url or redis.url,
                                 tmp_path / f"ratelimit-{len(servers)}", port=port,
                                 password_file=None if no_auth else password_file or redis.password_file,
                                 no_auth=no_auth)
        servers.append(server)
        server.start()
        return server

    yield start
    codes = [server.stop() for server in servers]
    # A server killed by the test (SIGKILL) reports -9; the others must
    # have shut down cleanly on SIGTERM.
    assert all(code in (0, -9) for code in codes), f"exit codes on SIGTERM: {codes}"
    for server in servers:
        assert redis.password not in server.log, f"the Redis password is in {server.workdir}/ratelimit.log"


def key_pair() -> tuple[str, str]:
    """A fresh (raw key, key id)."""
    tag = uuid.uuid4().hex[:12]
    return f"sk_live_fleet{tag}000000", f"key_{tag}"


def config(raw: str, key_id: str, requests: int, burst: int, fleet: dict | None) -> dict:
    limit = {"requests": requests, "period_seconds": PERIOD, "burst": burst}
    config = {"keys": [{"id": key_id, "sha256": hashlib.sha256(raw.encode()).hexdigest(),
                        "tenant": "t", "rate_limits": {"*": limit}}]}
    if fleet is not None:
        config["fleet"] = {"cluster": "ratelimit", "domain": "apikey", **fleet}
    return config


def clear_of_window_edge(margin: float = 15.0) -> None:
    """Sleeps past the next window edge when it is less than `margin`
    seconds away, so a test's requests all fall in one window."""
    remaining = PERIOD - time.time() % PERIOD
    if remaining < margin:
        time.sleep(remaining + 0.5)


def fleet_stats(*gateways: Gateway) -> dict[str, int]:
    """The filter's fleet counters, summed over gateways, short names."""
    total: dict[str, int] = {}
    for gateway in gateways:
        for name, value in gateway.metrics(FLEET_STATS).items():
            short = name.removeprefix(FLEET_STATS)
            total[short] = total.get(short, 0) + value
    return total


def timed(gateway: Gateway, raw: str):
    started = time.monotonic()
    response = gateway.request("GET", "/x", [("X-API-Key", raw)])
    return response, time.monotonic() - started


def assert_fleet_429(response, seconds_left: float, quota: int) -> None:
    """The contract's 429 for a fleet OVER_LIMIT (§3, §6)."""
    assert response.status == 429, (response.status, response.body)
    error = response.json["error"]
    assert (error["code"], error["scope"]) == ("rate_limited", "*"), error
    retry_after = error["retry_after"]
    # The server's time until the hour's window resets, rounded up.
    assert abs(retry_after - math.ceil(seconds_left)) <= 2, (retry_after, seconds_left)
    assert response.header("retry-after") == str(retry_after)
    assert response.header("ratelimit") == f'"*";r=0;t={retry_after}'
    assert response.header("ratelimit-policy") == f'"*";q={quota};w={PERIOD}'
    assert response.header("content-type") == "application/json"


@pytest.mark.parametrize("servers", [1, 2], ids=["one-server", "two-servers"])
def test_two_gateways_admit_exactly_n_of_2n(module, redis, server_factory, servers):
    n = 50
    raw, key_id = key_pair()
    started = [server_factory() for _ in range(servers)]
    ports = [started[0].port, started[-1].port]  # gateway i asks server i (or the one)
    # The local bucket (burst 2n) admits everything each gateway sees: only
    # the fleet can hold the total to n.
    fleet_config = config(raw, key_id, requests=n, burst=2 * n, fleet={"timeout_ms": 1000})
    with Gateway(module, fleet_config, concurrency=2, ratelimit_port=ports[0]) as first, \
         Gateway(module, fleet_config, concurrency=2, ratelimit_port=ports[1]) as second:
        clear_of_window_edge()
        seconds_left = PERIOD - time.time() % PERIOD
        targets = list(itertools.islice(itertools.cycle([first, second]), 2 * n))
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(lambda gw: gw.request("GET", "/x", [("X-API-Key", raw)]), targets))
        statuses = [r.status for r in responses]
        assert statuses.count(200) == n, f"admitted {statuses.count(200)} of {2 * n}, limit {n}: {statuses}"
        assert statuses.count(429) == n, statuses
        for denied in (r for r in responses if r.status == 429):
            assert_fleet_429(denied, seconds_left, quota=n)
        per_gateway = [sum(1 for gw, r in zip(targets, responses) if gw is g and r.status == 200)
                       for g in (first, second)]
        stats = fleet_stats(first, second)
        assert (stats["calls"], stats["over_limit"], stats["failures"], stats["timeouts"]) == (2 * n, n, 0, 0), stats
    counted = [server.metrics() for server in started]
    assert sum(m["requests"] for m in counted) == 2 * n, counted
    assert sum(m["over_limit"] for m in counted) == n, counted
    assert all(m["redis_errors"] == 0 for m in counted), counted
    if servers == 2:
        assert all(m["requests"] > 0 for m in counted), f"one server was never asked: {counted}"
    assert started[0].admin("/healthz") == (200, "ok\n")
    assert min(per_gateway) > 0, f"one gateway admitted nothing: {per_gateway}"
    for server in started:
        assert server.stop() == 0, "the server did not exit cleanly on SIGTERM"


def test_a_killed_server_follows_on_failure_and_the_circuit_opens_and_closes(module, server_factory):
    timeout_ms = 250
    raw, key_id = key_pair()
    server = server_factory()
    fleet = {"timeout_ms": timeout_ms, "on_failure": "local"}
    with Gateway(module, config(raw, key_id, requests=2, burst=50, fleet=fleet),
                 concurrency=2, ratelimit_port=server.port) as gw:
        clear_of_window_edge(margin=40)
        seconds_left = PERIOD - time.time() % PERIOD
        assert [timed(gw, raw)[0].status for _ in range(2)] == [200, 200]
        assert_fleet_429(timed(gw, raw)[0], seconds_left, quota=2)  # the fleet's limit, not the local burst

        server.kill()
        bound = timeout_ms / 1000 + 0.5
        for _ in range(2):  # on_failure local: the local bucket's answer (it has tokens) stands
            response, took = timed(gw, raw)
            assert response.status == 200, (response.status, response.body)
            assert took < bound, f"{took:.3f} s with on_failure local"
        assert gw.push(config(raw, key_id, requests=2, burst=50, fleet={**fleet, "on_failure": "deny"}))
        for _ in range(3):  # failures 3, 4 and 5
            response, took = timed(gw, raw)
            assert response.status == 503, (response.status, response.body)
            assert response.json["error"]["code"] == "rate_limiter_unavailable"
            assert took < bound, f"{took:.3f} s with on_failure deny"
        opened_at = time.monotonic()
        stats = fleet_stats(gw)
        assert (stats["failures"], stats["circuit_opened"]) == (5, 1), stats

        # Open: not asked, on_failure applies, even once the server is back.
        revived = server_factory(port=server.port)
        response, took = timed(gw, raw)
        assert (response.status, response.json["error"]["code"]) == (503, "rate_limiter_unavailable")
        stats = fleet_stats(gw)
        assert (stats["calls"], stats["skipped_open_circuit"]) == (8, 1), stats
        assert revived.metrics()["requests"] == 0

        # Closed after 10 s: asked again, and the fleet's count stood (3 of 2).
        time.sleep(max(0.0, opened_at + 10.3 - time.monotonic()))
        assert_fleet_429(timed(gw, raw)[0], PERIOD - time.time() % PERIOD, quota=2)
        stats = fleet_stats(gw)
        assert (stats["calls"], stats["circuit_opened"]) == (9, 1), stats
        assert revived.metrics()["requests"] == 1


def test_a_server_that_never_answers_is_bounded_by_timeout_ms(module):
    timeout_ms = 200
    raw, key_id = key_pair()
    fleet = {"timeout_ms": timeout_ms, "on_failure": "local"}
    with SilentListener() as silent, \
         Gateway(module, config(raw, key_id, requests=5, burst=50, fleet=fleet),
                 concurrency=2, ratelimit_port=silent.port) as gw:
        low, high = timeout_ms / 1000 * 0.9, timeout_ms / 1000 + 0.6
        for _ in range(2):
            response, took = timed(gw, raw)
            assert response.status == 200, (response.status, response.body)
            assert low <= took < high, f"{took:.3f} s for a {timeout_ms} ms timeout (local)"
        assert gw.push(config(raw, key_id, requests=5, burst=50, fleet={**fleet, "on_failure": "deny"}))
        for _ in range(2):
            response, took = timed(gw, raw)
            assert (response.status, response.json["error"]["code"]) == (503, "rate_limiter_unavailable")
            assert low <= took < high, f"{took:.3f} s for a {timeout_ms} ms timeout (deny)"
        # Each call ended at the timeout (the times above), and each is
        # counted as a timeout (the filter tells one from another failure by
        # the time elapsed, allowing for Envoy's timer firing a little early).
        stats = fleet_stats(gw)
        assert (stats["calls"], stats["timeouts"], stats["failures"], stats["circuit_opened"]) == (4, 4, 0, 0), stats
        assert silent.accepted >= 1, "Envoy never connected to the silent service"


def test_a_redis_failure_is_unavailable_and_on_failure_decides(module, server_factory):
    raw, key_id = key_pair()
    server = server_factory(redis_url=f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    fleet = {"timeout_ms": 2000, "on_failure": "deny"}
    with Gateway(module, config(raw, key_id, requests=5, burst=50, fleet=fleet),
                 concurrency=2, ratelimit_port=server.port) as gw:
        response, _ = timed(gw, raw)
        assert (response.status, response.json["error"]["code"]) == (503, "rate_limiter_unavailable")
        assert gw.push(config(raw, key_id, requests=5, burst=50, fleet={**fleet, "on_failure": "local"}))
        assert timed(gw, raw)[0].status == 200
        stats = fleet_stats(gw)
        assert (stats["calls"], stats["failures"], stats["timeouts"]) == (2, 2, 0), stats
    assert server.metrics()["redis_errors"] == 2
    status, body = server.admin("/healthz")
    assert status == 503 and body.startswith("redis:"), (status, body)


def test_without_fleet_each_gateway_keeps_its_own_exact_limit(module, server_factory):
    raw, key_id = key_pair()
    server = server_factory()
    local_only = config(raw, key_id, requests=1, burst=5, fleet=None)
    with Gateway(module, local_only, concurrency=2, ratelimit_port=server.port) as first, \
         Gateway(module, local_only, concurrency=2, ratelimit_port=server.port) as second:
        for gw in (first, second):
            with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
                statuses = list(pool.map(lambda _: gw.request("GET", "/x", [("X-API-Key", raw)]).status, range(10)))
            assert sorted(statuses) == [200] * 5 + [429] * 5, statuses
        stats = fleet_stats(first, second)
        assert stats.get("calls", 0) == 0, stats
        denied = first.request("GET", "/x", [("X-API-Key", raw)])
        assert denied.header("ratelimit-policy") == '"*";q=1;w=3600'
    assert server.metrics()["requests"] == 0, "a gateway without fleet asked the service"


# --- Redis authentication (issue 17) ---------------------------------------


def test_redis_refuses_a_client_without_the_password(redis):
    # What any client on Redis's network could do before: count, reset or
    # read the fleet's counters. Now every command is refused.
    for words in (["PING"], ["INCRBY", "apikey:apikey:key_id=x:scope=*:3600:0", "1000"], ["FLUSHALL"]):
        reply = redis.unauthenticated(*words)
        assert reply.startswith("-NOAUTH"), f"{' '.join(words)} without the password answered {reply!r}"
    assert redis.command("PING") == "+PONG", "the password itself was refused"


def test_a_server_without_the_password_is_refused_by_redis_and_the_gateway_fails_closed(
        module, redis, server_factory):
    raw, key_id = key_pair()
    server = server_factory(no_auth=True)
    assert "without a password" in server.log, f"--redis-no-auth is not said at start: {server.log!r}"
    fleet = {"timeout_ms": 2000, "on_failure": "deny"}
    with Gateway(module, config(raw, key_id, requests=5, burst=50, fleet=fleet),
                 concurrency=2, ratelimit_port=server.port) as gw:
        response, _ = timed(gw, raw)
        assert (response.status, response.json["error"]["code"]) == (503, "rate_limiter_unavailable"), \
            (response.status, response.body)
    assert server.metrics()["redis_errors"] == 1, server.metrics()
    status, body = server.admin("/healthz")
    assert status == 503 and "NOAUTH" in body, (status, body)


def test_a_wrong_password_is_refused_and_never_shown(redis, server_factory, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-8d3f\n")
    wrong.chmod(0o600)
    server = server_factory(password_file=wrong)
    status, body = server.admin("/healthz")
    assert status == 503 and "authentication failed" in body.lower(), (status, body)
    assert "not-the-password-8d3f" not in body, f"/healthz shows the password: {body!r}"
    assert "not-the-password-8d3f" not in server.log, f"the log shows the password: {server.log!r}"


def test_the_right_password_is_accepted(redis, server_factory):
    server = server_factory()
    assert server.admin("/healthz") == (200, "ok\n"), "the server did not authenticate with the password file"


def test_the_server_refuses_to_start_without_a_password_file(ratelimit_binary, redis):
    ran = subprocess.run([str(ratelimit_binary), "--redis", redis.url, "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 2, (ran.returncode, ran.stdout, ran.stderr)
    assert "--redis-password-file" in ran.stderr and not ran.stdout, (ran.stdout, ran.stderr)


def test_the_password_is_on_no_command_line_nor_in_the_servers_environment(redis, server_factory):
    server = server_factory()
    for name, pid, what in (("redis-server", redis.pid, "cmdline"), ("apikey-ratelimit", server.pid, "cmdline"),
                            ("apikey-ratelimit", server.pid, "environ")):
        seen = Path(f"/proc/{pid}/{what}").read_bytes()
        assert redis.password.encode() not in seen, f"the password is in {name}'s /proc/{pid}/{what}"


def test_a_server_stopped_as_soon_as_it_says_it_listens_exits_cleanly(ratelimit_binary, redis, tmp_path):
    # The SIGTERM handler is installed before the listening line: a
    # supervisor that stops the server right after reading it (as these
    # tests' fixtures do) once killed it with the signal's default action.
    codes = []
    for attempt in range(30):
        server = RateLimitServer(ratelimit_binary, redis.url, tmp_path / f"ratelimit-{attempt}",
                                 password_file=redis.password_file)
        server.start()
        codes.append(server.stop())
    assert codes == [0] * len(codes), f"exit codes on an immediate SIGTERM: {codes}"
