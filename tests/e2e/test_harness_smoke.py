"""The harness itself: the echo upstream reports what it received, Envoy
starts with the module and answers over HTTP/1.1 and h2c, push() tells an
accepted configuration from a refused one, the edge switch changes what
Envoy lets through, and failures surface with Envoy's log.

If these fail, no other e2e result means anything.
"""

import json
import socket
import threading

import pytest

import echo_upstream
from conftest import make_key
from harness import REPO_ROOT, Gateway, GatewayError

KEY = "sk_live_Smoke000000000000000000"
CONFIG = {"keys": [make_key(KEY, id="key_smoke", tenant="smoke")]}


@pytest.fixture
def upstream():
    server = echo_upstream.serve(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Sends one request on a kept-alive connection and reads one response
    whose length the headers give."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    if request.startswith(b"HEAD"):
        return head + b"\r\n\r\n"
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_echo_upstream_reports_method_raw_target_and_header_bytes(upstream):
    with socket.create_connection(("127.0.0.1", upstream), timeout=5) as sock:
        answer = exchange(sock, b"POST /a/%2F/../b?q=1 HTTP/1.1\r\nHost: x\r\nX-Bytes: \xff\x80ok\r\n"
                                b"X-Bytes: second\r\nContent-Length: 3\r\n\r\nabc")
        echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert echoed["method"] == "POST"
        assert echoed["path"] == "/a/%2F/../b?q=1"
        assert ["X-Bytes", "\xff\x80ok"] in echoed["headers"]
        assert ["X-Bytes", "second"] in echoed["headers"], "a repeated header was folded"
        head = exchange(sock, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        follow_up = exchange(sock, b"GET /after-head HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(follow_up.partition(b"\r\n\r\n")[2])["path"] == "/after-head", \
            "HEAD wrote a body, so the kept-alive connection is out of step"


def test_an_unconfigured_gateway_answers_with_the_module_default_config(module):
    with Gateway(module, config=None) as gw:
        for http2 in (False, True):
            response = gw.request("GET", "/anything", [("X-API-Key", KEY)], http2=http2)
            assert response.status == 503, response.body
            assert response.json["error"]["code"] == "not_configured"
            assert response.upstream is None


def test_a_configured_gateway_forwards_over_http1_and_h2c(module):
    with Gateway(module, config=CONFIG) as gw:
        for http2 in (False, True):
            response = gw.request("GET", "/v1/x?y=1", [("X-API-Key", KEY)], http2=http2)
            assert response.status == 200, response.body
            assert response.upstream["path"] == "/v1/x?y=1"
            assert ["x-api-tenant", "smoke"] in response.upstream["headers"]
        answer = gw.raw(b"GET /raw HTTP/1.1\r\nhost: x\r\nx-api-key: " + KEY.encode() + b"\r\nconnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
        assert gw.stats()["extension_config_discovery.http_filter.apikey.config_reload"] == 1
        assert '"status":200' in gw.log_text(), "no JSON access log line"


def test_push_reports_accepted_and_refused_configurations(module):
    with Gateway(module, config=CONFIG) as gw:
        assert gw.push({"keys": [make_key(KEY, id="key_renamed", tenant="pushed")]}) is True
        assert ["x-api-tenant", "pushed"] in gw.request("GET", "/", [("X-API-Key", KEY)]).upstream["headers"]
        assert gw.push({"keys": "not a list"}) is False
        assert gw.request("GET", "/", [("X-API-Key", KEY)]).status == 200, "the refused update replaced the table"
        with pytest.raises(ValueError):
            gw.push({"keys": "not a list"})


def test_edge_hardening_is_on_by_default_and_off_with_edge_false(module):
    underscore = [("X-API-Key", KEY), ("x_custom", "1")]
    with Gateway(module, config=CONFIG) as edge, Gateway(module, config=CONFIG, edge=False) as bare:
        assert edge.request("GET", "/a", underscore).status == 400, "headers_with_underscores_action is off"
        assert bare.request("GET", "/a", underscore).status == 200
        # An encoded slash: Envoy's own 400 at the edge, the filter's JSON one without it.
        assert (edge.request("GET", "/a%2Fb", [("X-API-Key", KEY)]).status, edge.request("GET", "/a%2Fb").json) == (400, None)
        assert bare.request("GET", "/a%2Fb", [("X-API-Key", KEY)]).json["error"]["code"] == "invalid_path"


def test_a_gateway_that_cannot_start_raises_with_envoys_log_and_leaves_nothing_running(module, tmp_path):
    # A module of the session's edge that is not there (libNAME.so: the
    # name a native module must have).
    missing = tmp_path / f"libmissing{module.suffix}"
    gateway = Gateway(missing, config=None, timeout=20)
    with pytest.raises(GatewayError, match=missing.name):
        with gateway:
            pass
    assert not gateway.running()


def test_leaving_the_gateway_stops_envoy_and_the_upstream(module):
    with Gateway(module) as gw:
        assert gw.running()
    assert not gw.running()


def test_the_demo_configuration_is_accepted(module):
    demo = json.loads((REPO_ROOT / "envoy" / "demo-config.json").read_text(encoding="utf-8"))
    with Gateway(module, config=None) as gw:
        assert gw.push(demo) is True, gw.log_text()[-2000:]
