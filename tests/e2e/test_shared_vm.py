"""Two filter configurations in one Envoy, one `vm_id` (contract §7.1,
issue 17 finding 1): each listener is enforced with its own keys, tenants,
settings and buckets, exactly as if alone, while the other is updated.

The bootstrap is envoy/envoy.yaml with a second listener, `partner`, whose
HCM carries a second ECDS-delivered apikey filter (`apikey_partner`) with
the same module, `vm_id` and `root_id` but its own plugin `name`: Envoy
then runs both configurations in one VM per worker, over one shared-data
space. The sequence of the issue (P, Q, P -> P1, P1 -> P2 used to rewrite
Q's bank) is part of the rolling updates below.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time

import pytest

import harness
from harness import Gateway, GatewayError

pytestmark = pytest.mark.wasm_only("two plugins sharing one Wasm VM id (vm_id) and its shared data")

PARTNER_FILTER = "apikey_partner"
PARTNER_FILE = "partner.yaml"
PARTNER_PLUGIN = "partner"
PARTNER_STATS = f"extension_config_discovery.http_filter.{PARTNER_FILTER}."

P_ONLY = "sk_live_SharedVmP000000000000000"
Q_ONLY = "sk_live_SharedVmQ000000000000000"
SHARED = "sk_live_SharedVmBoth000000000000"  # in both tables, another tenant in each
LIMITED = "sk_live_SharedVmLimited000000000"  # same id and hash in both, burst 3 each
ROUNDS = 6


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key(round_: int) -> str:
    return f"sk_live_SharedVmNew{round_:04d}00000000"


def fresh_key(round_: int) -> str:
    """In both tables from the start (tenant p in P's, q in Q's), first
    asked in round n: no worker has it cached, so its answer comes from the
    shared table as it is after P's n-th update."""
    return f"sk_live_SharedVmFresh{round_:04d}000000"


def fresh_keys(tenant: str) -> list[dict]:
    return [{"id": f"fresh{i}", "sha256": sha(fresh_key(i)), "tenant": tenant} for i in range(1, ROUNDS + 1)]


def p_config(round_: int) -> dict:
    """P, round n: its own keys, SHARED for tenant p, and keys new in each
    round up to n (so each update adds a key Q must never know)."""
    keys = [
        {"id": "p_only", "sha256": sha(P_ONLY), "tenant": "p"},
        {"id": "shared", "sha256": sha(SHARED), "tenant": "p"},
        {"id": "limited", "sha256": sha(LIMITED), "tenant": "p",
         "rate_limits": {"*": {"requests": 1, "period_seconds": 3600, "burst": 3}}},
    ]
    keys += [{"id": f"p_new{i}", "sha256": sha(new_key(i)), "tenant": "p"} for i in range(1, round_ + 1)]
    return {"keys": keys + fresh_keys("p"), "realm": f"p{round_}"}


def q_config(round_: int) -> dict:
    keys = [
        {"id": "q_only", "sha256": sha(Q_ONLY), "tenant": "q"},
        {"id": "shared", "sha256": sha(SHARED), "tenant": "q"},
        {"id": "limited", "sha256": sha(LIMITED), "tenant": "q",
         "rate_limits": {"*": {"requests": 1, "period_seconds": 3600, "burst": 3}}},
    ]
    return {"keys": keys + fresh_keys("q"), "realm": f"q{round_}"}


def answer(response) -> str:
    """`200 <tenant the upstream was told>` or the error code."""
    if response.status == 200:
        sent = {name.lower(): value for name, value in response.upstream["headers"]}
        return f"200 {sent.get('x-api-tenant')}"
    return (response.json or {}).get("error", {}).get("code", f"status {response.status}")


class TwoListeners(Gateway):
    """The harness's gateway plus the `partner` listener and its filter."""

    partner_config: dict | None = None
    partner_port: int = 0

    def start(self) -> None:
        # The harness renders and starts the gateway; the hook adds the
        # partner listener and writes its first ECDS file before Envoy starts.
        self.customize = self._add_partner
        super().start()
        listening = json.loads(self._admin_text("/listeners?format=json"))["listener_statuses"]
        self.partner_port = harness._named(listening, "partner", "listener")["local_address"]["socket_address"]["port_value"]
        # The same gateway seen through the partner listener (requests only
        # read the port, so both views can be used from several threads).
        self.partner = copy.copy(self)
        self.partner.port = self.partner_port
        if not self._await_partner({name: 0 for name in harness.ECDS_COUNTERS}):
            raise GatewayError(f"the partner's first configuration was refused\n{self._log_tail()}")

    def _add_partner(self, bootstrap: dict) -> None:
        listeners = bootstrap["static_resources"]["listeners"]
        partner = copy.deepcopy(harness._named(listeners, "ingress", "listener"))
        partner["name"] = "partner"
        manager = partner["filter_chains"][0]["filters"][0]["typed_config"]
        manager["stat_prefix"] = "partner_http"
        apikey = harness._named(manager["http_filters"], harness.FILTER_NAME, "HTTP filter")
        apikey["name"] = PARTNER_FILTER
        discovery = apikey["config_discovery"]
        discovery["config_source"]["path_config_source"]["path"] = str(self.ecds_dir / PARTNER_FILE)
        wasm = discovery["default_config"]["config"]
        wasm["name"] = PARTNER_PLUGIN  # the one difference: its plugin name
        assert wasm["vm_config"]["vm_id"] == "apikey" and wasm["root_id"] == "apikey"
        listeners.append(partner)
        self._bootstrap = bootstrap
        harness.write_ecds(self.ecds_dir / PARTNER_FILE, self._partner_document(self.partner_config))

    def _partner_document(self, config: dict) -> dict:
        wasm = copy.deepcopy(self._partner_wasm())
        wasm["config"]["configuration"]["value"] = harness.configuration_text(config)
        return {"resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": PARTNER_FILTER,
            "typed_config": wasm,
        }]}

    def _partner_wasm(self) -> dict:
        listener = harness._named(self._bootstrap["static_resources"]["listeners"], "partner", "listener")
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return harness._named(manager["http_filters"], PARTNER_FILTER, "HTTP filter")["config_discovery"]["default_config"]

    def _partner_counters(self) -> dict[str, int]:
        stats = self.stats(PARTNER_STATS)
        return {name: stats.get(PARTNER_STATS + name, 0) for name in harness.ECDS_COUNTERS}

    def _await_partner(self, before: dict[str, int]) -> bool:
        def decided():
            now = self._partner_counters()
            return now["update_success"] > before["update_success"] or now["update_rejected"] > before["update_rejected"]

        self._wait("Envoy to decide the partner configuration", decided)
        if self._partner_counters()["update_rejected"] > before["update_rejected"]:
            return False
        self._wait("every worker to apply the partner configuration",
                   lambda: self._partner_counters()["config_reload"] > before["config_reload"])
        return True

    def push_partner(self, config: dict) -> bool:
        before = self._partner_counters()
        harness.write_ecds(self.ecds_dir / PARTNER_FILE, self._partner_document(config))
        return self._await_partner(before)

    def ask(self, port: int, key: str) -> str:
        """One request to the listener on `port`, answered as `answer()`."""
        listener = self if port == self.port else self.partner
        return answer(listener.request("GET", "/x", [("X-API-Key", key)]))


@pytest.fixture
def gateway(wasm_module):
    gw = TwoListeners(wasm_module, config=p_config(0), concurrency=2)
    gw.partner_config = q_config(0)
    with gw:
        yield gw


def expected(listener: str, p_round: int) -> dict[str, str]:
    """What each key gets from `listener` while P is at round `p_round`."""
    mine = "p" if listener == "p" else "q"
    answers = {P_ONLY: "200 p" if mine == "p" else "invalid_key",
               Q_ONLY: "200 q" if mine == "q" else "invalid_key",
               SHARED: f"200 {mine}"}
    for i in range(1, ROUNDS + 1):
        answers[new_key(i)] = "200 p" if mine == "p" and i <= p_round else "invalid_key"
    return answers


def test_both_plugins_share_one_vm_and_get_their_own_lineage(gateway):
    log = gateway.log_text()
    assert "unavailable" not in log, "Envoy did not hand the filter its plugin name or root id"
    entries = dict(re.findall(r'plugin "([^"]+)" \(root_id "apikey"\): shared-data entries under (apikey\.v1\.[0-9a-f]{16}\.)', log))
    assert set(entries) == {"apikey", PARTNER_PLUGIN}, f"lineages logged: {entries}"
    assert entries["apikey"] != entries[PARTNER_PLUGIN], "both plugins were given one lineage"
    # The same vm_id and code make Envoy share the VMs between the plugins:
    # as many as one plugin alone has (measured: the base VM, the main
    # thread's and one per worker), so shared data is shared too.
    stats = gateway.stats("wasm.envoy.wasm.runtime.v8.")
    active = stats.get("wasm.envoy.wasm.runtime.v8.active")
    assert active is not None and active <= 2 + gateway.concurrency, f"the plugins did not share a VM: {stats}"


def test_a_configuration_rolled_through_updates_never_changes_what_the_other_answers(gateway):
    p_port, q_port = gateway.port, gateway.partner_port
    stop = threading.Event()
    q_stream: list[tuple[str, str]] = []

    def ask_q_all_along():
        while not stop.is_set():
            for key in (Q_ONLY, SHARED, P_ONLY):
                try:
                    q_stream.append((key, gateway.ask(q_port, key)))
                except Exception as error:  # a reset or refused connection is a failure too
                    q_stream.append((key, f"error: {error}"))

    client = threading.Thread(target=ask_q_all_along)
    client.start()
    try:
        for round_ in range(1, ROUNDS + 1):
            written = time.monotonic()
            assert gateway.push(p_config(round_)) is True, f"P's update {round_} refused"
            # P follows its update within 1 s of the file landing.
            while gateway.ask(p_port, new_key(round_)) != "200 p":
                assert time.monotonic() - written < 1.0, f"P's round {round_} not enforced within 1 s"
            # Q first, so neither listener's workers have it cached.
            for listener, port in (("q", q_port), ("p", p_port)):
                got = gateway.ask(port, fresh_key(round_))
                assert got == f"200 {listener}", f"round {round_}: {listener} answered {got} for a key first asked now"
            if round_ == 3:
                assert gateway.push_partner(q_config(1)) is True, "Q's update refused"
            for listener, port in (("p", p_port), ("q", q_port)):
                for key, want in expected(listener, round_).items():
                    got = gateway.ask(port, key)
                    assert got == want, f"round {round_}: {listener} answered {got} for {key}, not {want}"
    finally:
        stop.set()
        client.join(timeout=10)
    wrong = [(key, got) for key, got in q_stream if got != expected("q", 0)[key]]
    assert len(q_stream) > 30, f"only {len(q_stream)} requests reached Q during P's updates"
    assert not wrong, f"{len(wrong)} of {len(q_stream)} answers of Q changed while P was updated: {wrong[:5]}"


def test_two_configurations_with_the_same_key_id_have_their_own_buckets(gateway):
    p_port, q_port = gateway.port, gateway.partner_port
    p_answers = [gateway.ask(p_port, LIMITED) for _ in range(4)]
    assert p_answers == ["200 p"] * 3 + ["rate_limited"], f"P's burst of 3: {p_answers}"
    q_answers = [gateway.ask(q_port, LIMITED) for _ in range(4)]
    assert q_answers == ["200 q"] * 3 + ["rate_limited"], f"Q's own burst of 3 after P spent P's: {q_answers}"
    # An update of P keeps P's bucket (contract §4) and leaves Q's alone.
    assert gateway.push(p_config(1)) is True
    assert gateway.ask(p_port, LIMITED) == "rate_limited", "P's update handed out a fresh burst"
    assert gateway.ask(q_port, LIMITED) == "rate_limited", "P's update refilled Q's bucket"
