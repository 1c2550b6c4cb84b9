"""Runs the real thing for end-to-end tests: Envoy 1.40 with the built
filter, in front of an upstream that echoes what it received.

The filter is one of two edges (contract §9): the Wasm module, or the same
core as a native Envoy dynamic module. The session's edge is `--edge` /
APIKEY_EDGE (wasm unless told); a gateway runs the edge of the module it is
given (a `.so` is the native one). The bootstrap is the one the project
ships for that edge (envoy/envoy.yaml, envoy/envoy-native.yaml), with only
ports and paths substituted, so a test exercises the listener, the edge
settings and the ECDS wiring users run. Plugin configurations travel the
way a control plane sends them: an ECDS file renamed into a watched
directory. Requests are written byte by byte (HTTP/1.1 on a socket, h2c
through the `h2` state machine with validation off), so tests can send the
malformed and hostile input a real client library would refuse to.

    with Gateway(build_module(), config={"keys": [...]}) as gw:
        assert gw.request("GET", "/x", [("X-API-Key", "sk_live_...")]).status == 200
        assert gw.push({"keys": []}) is True

Every wait polls with a deadline and, when it gives up or Envoy dies,
raises GatewayError carrying the tail of Envoy's log.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import h2.config
import h2.connection
import h2.events
import yaml

from echo_upstream import MARKER_HEADER

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO_ROOT / "envoy" / "envoy.yaml"
NATIVE_BOOTSTRAP = REPO_ROOT / "envoy" / "envoy-native.yaml"
ECHO_UPSTREAM = Path(__file__).resolve().with_name("echo_upstream.py")
TLS_CERT_SCRIPT = REPO_ROOT / "scripts" / "tls-cert.sh"
# The marker header's value on the sandbox upstream's answers (x-api-env: test).
SANDBOX_NAME = "sandbox"
ECDS_FILE = "apikey.yaml"
FILTER_NAME = "apikey"
ECDS_STATS = f"extension_config_discovery.http_filter.{FILTER_NAME}."
ECDS_COUNTERS = ("update_success", "update_rejected", "config_reload")
# A DiscoveryResponse with no resource: Envoy needs the ECDS file to exist
# at start-up, counts this one as a rejected update and serves default_config.
NOTHING_YET = {"resources": []}
LOG_TAIL_LINES = 40

Header = tuple[str | bytes, str | bytes]


class GatewayError(RuntimeError):
    """Envoy or the upstream failed, or a wait ran out of time."""


# --- the two edges ---------------------------------------------------------

WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
DYNAMIC_MODULE_FILTER_TYPE = \
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
# Where Envoy looks for a dynamic module named in dynamic_module_config.
SEARCH_PATH_VARIABLE = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"


@dataclass(frozen=True)
class Edge:
    """What differs, seen from outside, between the two builds of the filter
    (contract §9): everything else, answers included, is the same."""

    name: str  # as --edge and APIKEY_EDGE spell it
    bootstrap: Path  # the shipped bootstrap
    filter_type: str  # the type URL of the filter's config (default_config, ECDS)
    # The namespace Envoy puts before the filter's own metrics in /stats
    # (and drops in /stats/prometheus).
    metrics_namespace: str
    # How a Prometheus scrape renames the filter's metrics to the names the
    # alerts and dashboard query (envoy/observability/README.md): none on
    # the Wasm edge (Envoy drops `wasmcustom.` itself); on the native edge
    # Envoy 1.40 exposes `envoy_dynamicmodulescustom_apikey_…`, and the
    # documented metric_relabel_configs rule strips the prefix (this regex
    # and `$1`).
    prometheus_relabel: str | None
    # What Envoy's log says when the filter itself failed rather than
    # decided: a Wasm VM's trap or panic (its request, and every later one
    # on that worker, answered 503); a native module's caught panic (the
    # request answered 503 not_configured, logged at critical, contract §9).
    failure_markers: tuple[str, ...]

    def metric(self, name: str) -> str:
        """The /stats name of one of the filter's metrics (`apikey.…`)."""
        return self.metrics_namespace + name


WASM = Edge("wasm", BOOTSTRAP, WASM_FILTER_TYPE, "wasmcustom.", None,
            ("panicked", "failed: Uncaught", "Function: proxy_on_", "wasm trap", "VM has crashed"))
NATIVE = Edge("native", NATIVE_BOOTSTRAP, DYNAMIC_MODULE_FILTER_TYPE, "dynamicmodulescustom.",
              "envoy_dynamicmodulescustom_(apikey_.+)", ("panicked", "[critical]"))
EDGES = {edge.name: edge for edge in (WASM, NATIVE)}
EDGE_VARIABLE = "APIKEY_EDGE"


def session_edge() -> Edge:
    """The edge this test session runs: APIKEY_EDGE (conftest sets it from
    --edge), wasm when unset."""
    name = os.environ.get(EDGE_VARIABLE) or WASM.name
    if name not in EDGES:
        raise GatewayError(f"{EDGE_VARIABLE}={name!r}: the edges are {', '.join(EDGES)}")
    return EDGES[name]


def edge_of(module: Path) -> Edge:
    """The edge a built module belongs to: a shared library is the native
    one, anything else (a .wasm) the Wasm one."""
    return NATIVE if Path(module).suffix == ".so" else WASM


def native_module_name(module: Path) -> str:
    """The `dynamic_module_config.name` that makes Envoy open `module`:
    libNAME.so, from the directory in ENVOY_DYNAMIC_MODULES_SEARCH_PATH."""
    match = re.fullmatch(r"lib(.+)\.so", Path(module).name)
    if not match:
        raise GatewayError(f"{module}: Envoy opens a dynamic module as libNAME.so")
    return match.group(1)


def envoy_binary() -> Path:
    """The Envoy that scripts/setup.sh installed (ENVOY_BIN overrides)."""
    path = Path(os.environ.get("ENVOY_BIN") or REPO_ROOT / ".venv" / "bin" / "envoy")
    if not path.exists():
        raise GatewayError(f"{path} not found: run scripts/setup.sh")
    return path


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1, for a test that must name one
    before anything listens on it (the gateway itself binds port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def tls_certificate() -> tuple[Path, Path]:
    """The HTTPS listener's certificate and key for this test session: made
    once by scripts/tls-cert.sh (the script the demo runs), self-signed for
    localhost and 127.0.0.1."""
    directory = Path(tempfile.mkdtemp(prefix="apikey-tls-"))
    made = subprocess.run(["bash", str(TLS_CERT_SCRIPT), str(directory)], capture_output=True, text=True,
                          timeout=60)
    if made.returncode != 0:
        raise GatewayError(f"scripts/tls-cert.sh failed:\n{made.stdout}{made.stderr}")
    return directory / "gateway.crt", directory / "gateway.key"


def tls_client_context(http2: bool) -> ssl.SSLContext:
    """A client that trusts only the session's certificate and offers h2 or
    http/1.1 by ALPN."""
    context = ssl.create_default_context(cafile=str(tls_certificate()[0]))
    context.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    return context


@functools.cache
def build_module() -> Path:
    """Builds the release filter once per test session and returns the
    .wasm path; APIKEY_WASM names a prebuilt module instead."""
    override = os.environ.get("APIKEY_WASM")
    if override:
        return Path(override).resolve()
    command = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "apikey-filter"]
    built = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise GatewayError(f"{' '.join(command)} failed:\n{built.stderr[-4000:]}")
    module = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "apikey_filter.wasm"
    # The module as shipped: unused callbacks dropped, wasm-opt applied.
    finish = [sys.executable, str(REPO_ROOT / "scripts" / "finish_module.py"), str(module)]
    finished = subprocess.run(finish, capture_output=True, text=True, timeout=300)
    if finished.returncode != 0:
        raise GatewayError(f"finishing {module} failed:\n{finished.stderr[-4000:]}")
    return module


@functools.cache
def build_native() -> Path:
    """Builds the native filter (the dynamic module, contract §9) once per
    test session with scripts/lib.sh's build_native (the release-native
    profile, which unwinds so the module catches panics, copied to
    target/release/) and returns the .so path; APIKEY_NATIVE names a
    prebuilt one instead (its file name must stay libNAME.so)."""
    override = os.environ.get("APIKEY_NATIVE")
    if override:
        return Path(override).resolve()
    command = ["bash", "-c", f"source {REPO_ROOT / 'scripts' / 'lib.sh'} && build_native"]
    built = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise GatewayError(f"scripts/lib.sh build_native failed:\n{built.stderr[-4000:]}")
    return REPO_ROOT / "target" / "release" / "libapikey_dynamic.so"


def build_edge_module(edge: Edge | None = None) -> Path:
    """The built filter of `edge` (the session's by default)."""
    return build_native() if (edge or session_edge()) is NATIVE else build_module()


def cli_filter_args(module: Path) -> list[str]:
    """The `apikey` CLI's global options that make the ECDS files it writes
    carry `module`'s filter, as the bootstrap harness renders it."""
    if edge_of(module) is NATIVE:
        return ["--edge", "native", "--dynamic-module", native_module_name(module)]
    return ["--edge", "wasm", "--wasm", str(module)]


# --- the bootstrap ---------------------------------------------------------

def _named(items: Iterable[dict], name: str, what: str) -> dict:
    for item in items:
        if item.get("name") == name:
            return item
    raise GatewayError(f"no {what} named {name!r}")


def _connection_manager(bootstrap: dict) -> dict:
    listener = _named(bootstrap["static_resources"]["listeners"], "ingress", "listener")
    filters = listener["filter_chains"][0]["filters"]
    return _named(filters, "envoy.filters.network.http_connection_manager", "network filter")["typed_config"]


def _apikey_discovery(bootstrap: dict) -> dict:
    """The `config_discovery` block of the apikey HTTP filter."""
    return _named(_connection_manager(bootstrap)["http_filters"], FILTER_NAME, "HTTP filter")["config_discovery"]


def load_bootstrap(path: Path = BOOTSTRAP) -> dict:
    with open(path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def bootstrap_edge(bootstrap: dict) -> Edge:
    """The edge whose filter a bootstrap's `apikey` filter runs."""
    filter_type = _apikey_discovery(bootstrap)["default_config"]["@type"]
    return next(edge for edge in EDGES.values() if edge.filter_type == filter_type)


def set_filter_configuration(filter_config: dict, text: str) -> None:
    """Puts the plugin configuration into a filter config of either edge:
    the Wasm filter's `config.configuration`, the dynamic module's
    `filter_config` (both a StringValue)."""
    if filter_config["@type"] == DYNAMIC_MODULE_FILTER_TYPE:
        filter_config["filter_config"]["value"] = text
    else:
        filter_config["config"]["configuration"]["value"] = text


def filter_configuration(filter_config: dict) -> str:
    """The plugin configuration a filter config of either edge carries."""
    if filter_config["@type"] == DYNAMIC_MODULE_FILTER_TYPE:
        return filter_config["filter_config"]["value"]
    return filter_config["config"]["configuration"]["value"]


def ecds_path(bootstrap: dict) -> Path:
    """The ECDS file the bootstrap watches (relative to Envoy's working directory)."""
    return Path(_apikey_discovery(bootstrap)["config_source"]["path_config_source"]["path"])


def render_bootstrap(module: Path, ecds_dir: Path, upstream_port: int, edge: bool = True,
                     ratelimit_port: int | None = None, ecds_file: str = ECDS_FILE,
                     sandbox_port: int | None = None) -> dict:
    """The shipped bootstrap of the module's edge (envoy/envoy.yaml, or
    envoy/envoy-native.yaml for a .so) with this gateway's module, ECDS
    directory and upstream; listener and admin on port 0 of 127.0.0.1
    (Envoy picks free ports, so gateways never race for one). A native
    module is named by its file name: Envoy must be started with its
    directory in ENVOY_DYNAMIC_MODULES_SEARCH_PATH (Gateway does that).

    edge=False drops Envoy's own path and header-name hardening (contract
    §5), so that tests of the filter's path handling see raw paths.
    ratelimit_port points the `ratelimit` cluster (contract §6) at a
    rate-limit service on that port of 127.0.0.1. ecds_file names the
    watched file; Envoy picks its parser by the extension (`apikey.pb`:
    binary protobuf, as the CLI's --ecds-format pb writes). The HTTPS
    listener uses the session's certificate (tls_certificate()), and the
    sandbox cluster points at sandbox_port (the upstream when None)."""
    # `edge` (the argument) is Envoy's hardening; the filter's edge is the module's.
    module_edge = edge_of(module)
    bootstrap = load_bootstrap(module_edge.bootstrap)
    bootstrap["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    for name in ("ingress", "ingress_tls"):
        listener = _named(bootstrap["static_resources"]["listeners"], name, "listener")
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    certificate, key = tls_certificate()
    tls_listener = _named(bootstrap["static_resources"]["listeners"], "ingress_tls", "listener")
    tls_context = tls_listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    tls_context["tls_certificates"] = [{"certificate_chain": {"filename": str(certificate)},
                                        "private_key": {"filename": str(key)}}]
    for name, port in (("upstream", upstream_port), ("sandbox", sandbox_port or upstream_port)):
        cluster = _named(bootstrap["static_resources"]["clusters"], name, "cluster")
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    discovery = _apikey_discovery(bootstrap)
    discovery["config_source"]["path_config_source"] = {
        "path": str(ecds_dir / ecds_file),
        "watched_directory": {"path": str(ecds_dir)},
    }
    if module_edge is NATIVE:
        discovery["default_config"]["dynamic_module_config"]["name"] = native_module_name(module)
    else:
        discovery["default_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(module)
    if not edge:
        manager = _connection_manager(bootstrap)
        for setting in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"):
            manager.pop(setting, None)
        manager.get("common_http_protocol_options", {}).pop("headers_with_underscores_action", None)
    if ratelimit_port is not None:
        ratelimit = _named(bootstrap["static_resources"]["clusters"], "ratelimit", "cluster")
        endpoint = ratelimit["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=ratelimit_port)
    return bootstrap


# --- the native edge's names, as tests/e2e/test_native_edge.py uses them ---

NATIVE_FILTER_TYPE = DYNAMIC_MODULE_FILTER_TYPE
NATIVE_LIBRARY = REPO_ROOT / "target" / "release" / "libapikey_dynamic.so"
# Envoy finds libapikey_dynamic.so in this directory (contract §9).
NATIVE_SEARCH_PATH_VAR = SEARCH_PATH_VARIABLE


def render_native(bootstrap: dict) -> None:
    """Turns a rendered bootstrap's apikey filter into the native edge:
    the ECDS default_config (and so every document ecds_document writes)
    becomes the dynamic-module filter with an empty configuration. A
    Gateway given a .so already runs envoy/envoy-native.yaml, whose filter
    this is; as a `customize` it changes nothing there, and turns a Wasm
    bootstrap into the native one."""
    discovery = _apikey_discovery(bootstrap)
    discovery["default_config"] = {
        "@type": NATIVE_FILTER_TYPE,
        "dynamic_module_config": {"name": "apikey_dynamic"},
        "filter_name": "apikey",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ""},
    }
    discovery["type_urls"] = [NATIVE_FILTER_TYPE]


# --- the ECDS file ---------------------------------------------------------

def configuration_text(config: dict | str) -> str:
    """The plugin configuration as the filter receives it: dicts as JSON,
    strings as they are (so tests can send invalid or empty text)."""
    return config if isinstance(config, str) else json.dumps(config)


def ecds_document(bootstrap: dict, config: dict | str) -> dict:
    """A DiscoveryResponse carrying the bootstrap's default filter (the Wasm
    one: same module, vm_id and root_id; the native one: same module and
    filter name) with `config` as its configuration."""
    filter_config = copy.deepcopy(_apikey_discovery(bootstrap)["default_config"])
    set_filter_configuration(filter_config, configuration_text(config))
    return {"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": FILTER_NAME,
        "typed_config": filter_config,
    }]}


def write_ecds(path: Path, document: dict) -> None:
    """Replaces the ECDS file atomically: Envoy's watched_directory reacts to
    the rename, and never reads a half-written file. JSON is valid YAML,
    and json.dumps escapes the configuration string safely."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


# --- responses -------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, latin-1 decoded, in order
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        return next((value for key, value in self.headers if key == name.lower()), None)

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def upstream(self) -> dict | None:
        """What the echo upstream received, when the request reached it."""
        return self.json if self.header(MARKER_HEADER) else None


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def parse_http1_response(data: bytes) -> Response:
    """Parses one HTTP/1.1 response, as `Gateway.raw` read it."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise GatewayError(f"incomplete HTTP response: {data[:300]!r}")
    status_line, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    response = Response(int(status_line.split(b" ", 2)[1]), headers, body)
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body = _dechunk(body)
    return response


def _response_complete(data: bytes, head_request: bool) -> bool:
    """Whether `data` holds a whole HTTP/1.1 response (False when its end
    can only be known from the connection closing)."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    status = int(head.split(b" ", 2)[1])
    if head_request or status in (204, 304) or 100 <= status < 200:
        return True
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        return body.endswith(b"0\r\n\r\n")
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"])
    return False


def _dechunk(body: bytes) -> bytes:
    chunks, rest = [], body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(chunks)
        chunks.append(rest[:size])
        rest = rest[size + 2:]


# --- the gateway -----------------------------------------------------------

_work_root: Path | None = None


def set_work_root(path: Path) -> None:
    """Where gateways keep their files (pytest's tmp dir, set by conftest)."""
    global _work_root
    _work_root = path


def _new_workdir() -> Path:
    test = os.environ.get("PYTEST_CURRENT_TEST", "gateway").split(" ")[0].split("::")[-1]
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", test)[:60] + "-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_work_root))


@dataclass
class Gateway:
    """Envoy with the module and an echo upstream, as a context manager.

    module: the built filter, the Wasm module or the native .so (its edge,
    `filter_edge`, picks the bootstrap). config: dict (sent as JSON), str (sent as is) or None (no configuration
    yet, so the default_config serves: 503 not_configured). A configuration
    given here must be accepted, or entering the gateway fails.
    """

    module: Path
    config: dict | str | None = None
    concurrency: int = 2
    edge: bool = True
    log_level: str = "info"
    timeout: float = 60.0  # bounds start-up and each push (a 100k-key table takes seconds)
    workdir: Path = field(default_factory=_new_workdir)
    ratelimit_port: int | None = None  # the `ratelimit` cluster's port (fleet limits, §6)
    # The watched ECDS file. With `apikey.pb` (binary protobuf) the harness
    # writes only the empty "nothing yet" file; the CLI writes the rest.
    ecds_file: str = ECDS_FILE
    # For bootstraps other deployments run (Istio's, a gateway behind a
    # load balancer): called with the rendered bootstrap before Envoy starts, and a document Envoy merges
    # over it (--config-yaml: repeated fields appended, as Istio's agent
    # does with a custom bootstrap).
    customize: Callable[[dict], None] | None = None
    config_yaml: str | None = None

    def __post_init__(self):
        self.ecds_dir = self.workdir / "ecds"
        self.log_path = self.workdir / "envoy.log"
        self._envoy: subprocess.Popen | None = None
        self._upstream: subprocess.Popen | None = None
        self._sandbox: subprocess.Popen | None = None
        self._bootstrap: dict = {}
        self._last_document: dict = {}
        self.admin_address = ""
        self.port = 0
        self.tls_port = 0  # the HTTPS listener (request(..., tls=True))
        self.upstream_port = 0
        self.sandbox_port = 0  # the sandbox upstream: answers carry x-echo-upstream: sandbox
        self.filter_edge = edge_of(Path(self.module))  # `edge` is Envoy's hardening

    def __enter__(self) -> Gateway:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- lifecycle --

    def start(self) -> None:
        self.ecds_dir.mkdir(parents=True)
        self._upstream, self.upstream_port = self._start_upstream("upstream")
        self._sandbox, self.sandbox_port = self._start_upstream(SANDBOX_NAME)
        bootstrap = render_bootstrap(Path(self.module), self.ecds_dir, self.upstream_port, self.edge,
                                     self.ratelimit_port, self.ecds_file, self.sandbox_port)
        if self.customize is not None:
            self.customize(bootstrap)
        self._bootstrap = bootstrap
        initial = NOTHING_YET if self.config is None else ecds_document(bootstrap, self.config)
        if self._protobuf_ecds():
            if self.config is not None:
                raise ValueError("a gateway watching apikey.pb starts with no configuration")
            # An empty DiscoveryResponse encodes as no bytes at all.
            (self.ecds_dir / self.ecds_file).write_bytes(b"")
        else:
            write_ecds(self.ecds_dir / self.ecds_file, initial)
        self._last_document = initial
        bootstrap_path = self.workdir / "bootstrap.json"
        bootstrap_path.write_text(json.dumps(bootstrap, indent=1), encoding="utf-8")
        self._start_envoy(bootstrap_path)
        self._wait_for_initial_configuration()

    def stop(self) -> None:
        """Stops Envoy and the upstreams; safe to call more than once."""
        for process in (self._envoy, self._upstream, self._sandbox):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    def running(self) -> bool:
        """Whether Envoy or an upstream is still running."""
        return any(process is not None and process.poll() is None
                   for process in (self._envoy, self._upstream, self._sandbox))

    def _start_upstream(self, name: str) -> tuple[subprocess.Popen, int]:
        """An echo upstream binds port 0 and prints the port it got; the
        production one marks its answers "1", the sandbox one "sandbox"."""
        log_path = self.workdir / f"{name}.log"
        marker = SANDBOX_NAME if name == SANDBOX_NAME else "1"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, str(ECHO_UPSTREAM), "--port", "0", "--name", marker],
                                       stdout=subprocess.PIPE, stderr=log)
        line = _read_line(process.stdout, timeout=10)
        process.stdout.close()  # it prints nothing else
        match = re.fullmatch(rb"listening on 127\.0\.0\.1:(\d+)\n", line)
        if not match:
            process.kill()
            raise GatewayError(f"the echo upstream {name} did not start: {line!r}, see {log_path}")
        return process, int(match.group(1))

    def _start_envoy(self, bootstrap_path: Path) -> None:
        address_file = self.workdir / "admin-address"
        command = [
            str(envoy_binary()), "-c", str(bootstrap_path),
            "--concurrency", str(self.concurrency),
            "-l", self.log_level,
            "--admin-address-path", str(address_file),
            # No hot restart, so no shared-memory base id: any number of
            # gateways run side by side and none leaves /dev/shm behind.
            "--disable-hot-restart",
        ]
        if self.config_yaml is not None:
            command += ["--config-yaml", self.config_yaml]
        environment = dict(os.environ)
        if self.filter_edge is NATIVE:
            environment[SEARCH_PATH_VARIABLE] = str(Path(self.module).resolve().parent)
        with open(self.log_path, "wb") as log:
            self._envoy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                           env=environment)
        self._wait("Envoy to write its admin address", lambda: address_file.read_text().strip())
        self.admin_address = address_file.read_text().strip()
        self._wait("the admin /ready to say LIVE", lambda: self._admin_text("/ready") == "LIVE\n")
        self.port = self._listener_port("ingress")
        self.tls_port = self._listener_port("ingress_tls")
        self._wait("the listener to accept connections", self._listener_accepts)

    def _wait_for_initial_configuration(self) -> None:
        """The listener serves the default_config at once and reads the ECDS
        file right after: wait for that, so a test starts from its
        configuration (or, with none, from the refused empty file)."""
        accepted = self.await_update(before={name: 0 for name in ECDS_COUNTERS})
        if self.config is not None and not accepted:
            raise GatewayError(f"Envoy refused the initial configuration\n{self._log_tail()}")

    # -- configuration --

    def push(self, config: dict | str) -> bool:
        """Sends a configuration through ECDS; True once every worker applies
        it, False when Envoy refuses it (and keeps the previous one).

        Envoy skips a configuration identical to the last one it received,
        even a refused one, and reports that as a success: pushing the same
        configuration twice in a row is refused here instead."""
        if self._protobuf_ecds():
            raise ValueError("the harness writes JSON ECDS files; write apikey.pb with the CLI")
        document = ecds_document(self._bootstrap, config)
        if document == self._last_document:
            raise ValueError("Envoy ignores a configuration identical to the last one it received")
        before = self.ecds_counters()
        write_ecds(self.ecds_dir / self.ecds_file, document)
        self._last_document = document
        return self.await_update(before)

    def _protobuf_ecds(self) -> bool:
        return self.ecds_file.endswith(".pb")

    def await_update(self, before: dict[str, int]) -> bool:
        """Waits for the ECDS update after the counters `before` (taken with
        ecds_counters() before the file changed; push() does this, and a test
        whose ECDS file another program writes calls it itself): False when
        refused, True once accepted and applied on every worker.

        update_success and update_rejected say what the main thread decided;
        config_reload counts updates every worker has switched to (Envoy
        bumps it on some refusals too, so it is read only after a success)."""
        def decided():
            now = self.ecds_counters()
            return now["update_success"] > before["update_success"] or now["update_rejected"] > before["update_rejected"]

        self._wait("Envoy to accept or refuse the configuration", decided)
        if self.ecds_counters()["update_rejected"] > before["update_rejected"]:
            return False
        self._wait("every worker to apply the configuration",
                   lambda: self.ecds_counters()["config_reload"] > before["config_reload"])
        return True

    def ecds_counters(self) -> dict[str, int]:
        """The ECDS counters await_update() compares."""
        stats = self.stats(ECDS_STATS)
        return {name: stats[ECDS_STATS + name] for name in ECDS_COUNTERS}

    # -- requests --

    def request(self, method: str, path: str | bytes, headers: Sequence[Header] = (),
                body: bytes | None = None, http2: bool = False, timeout: float = 10.0,
                tls: bool = False) -> Response:
        """One request on a new connection. Names and values may be str
        (UTF-8) or bytes (sent exactly); nothing is validated or normalised,
        except that HTTP/2 header names are lower-cased as the protocol requires.
        tls=True sends it to the HTTPS listener (ALPN h2 or http/1.1)."""
        if http2:
            return self._request_h2(method, path, headers, body, timeout, tls)
        lines = [_to_bytes(method) + b" " + _to_bytes(path) + b" HTTP/1.1"]
        names = {_to_bytes(name).lower() for name, _ in headers}
        if b"host" not in names:
            lines.append(b"host: localhost")
        if b"connection" not in names:
            lines.append(b"connection: close")
        if body is not None and b"content-length" not in names:
            lines.append(b"content-length: " + str(len(body)).encode())
        lines += [_to_bytes(name) + b": " + _to_bytes(value) for name, value in headers]
        return parse_http1_response(self.raw(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""), timeout, tls))

    def _connect(self, timeout: float, tls: bool, http2: bool = False) -> socket.socket:
        """A connection to the plain listener, or a TLS one to the HTTPS
        listener that checks the certificate and the protocol ALPN chose."""
        if not tls:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=timeout)
        try:
            wrapped = tls_client_context(http2).wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
        wanted = "h2" if http2 else "http/1.1"
        if wrapped.selected_alpn_protocol() != wanted:
            wrapped.close()
            raise GatewayError(f"ALPN chose {wrapped.selected_alpn_protocol()!r}, not {wanted}")
        return wrapped

    def raw(self, data: bytes, timeout: float = 10.0, tls: bool = False) -> bytes:
        """Sends bytes to the listener and returns Envoy's first response:
        read up to its end (Content-Length or the last chunk), or to the
        connection's close when its length is not known. Stopping at the
        end matters: after a local reply Envoy holds the connection open for
        its delayed-close timeout (1 s), which would slow every denial down
        and skew any test that measures time between requests."""
        head_request = data.split(b" ", 1)[0].upper() == b"HEAD"
        with self._connect(timeout, tls) as sock:
            sock.sendall(data)
            received = b""
            deadline = time.monotonic() + timeout
            while not _response_complete(received, head_request):
                chunk = self._recv_before(sock, deadline)
                if not chunk:
                    break
                received += chunk
        return received

    def _recv_before(self, sock: socket.socket, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError("Envoy did not close the connection in time (did the request say close?)")
        sock.settimeout(remaining)
        try:
            return sock.recv(65536)
        except (ConnectionResetError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except socket.timeout:
            raise GatewayError(f"no answer from Envoy within the timeout\n{self._log_tail()}") from None

    def _request_h2(self, method, path, headers, body, timeout, tls) -> Response:
        """HTTP/2: with prior knowledge (h2c), or over TLS by ALPN;
        validation off so any bytes go out."""
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False)
        connection = h2.connection.H2Connection(config=config)
        request_headers = [(b":method", _to_bytes(method)), (b":scheme", b"https" if tls else b"http"),
                           (b":authority", b"localhost"), (b":path", _to_bytes(path))]
        request_headers += [(_to_bytes(name).lower(), _to_bytes(value)) for name, value in headers]
        with self._connect(timeout, tls, http2=True) as sock:
            connection.initiate_connection()
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, request_headers, end_stream=body is None)
            if body is not None:
                connection.send_data(stream, body, end_stream=True)
            sock.sendall(connection.data_to_send())
            return self._read_h2_response(sock, connection, stream, time.monotonic() + timeout)

    def _read_h2_response(self, sock, connection, stream, deadline) -> Response:
        status, response_headers, body = 0, [], bytearray()
        while True:
            data = self._recv_before(sock, deadline)
            if not data:
                raise GatewayError("Envoy closed the HTTP/2 connection before the response ended")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == b":status":
                            status = int(value)
                        else:
                            response_headers.append((name.decode("latin-1"), value.decode("latin-1")))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    return Response(status, response_headers, bytes(body))
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise GatewayError(f"Envoy reset the HTTP/2 stream: {event}")
            sock.sendall(connection.data_to_send())

    # -- observation --

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges (histograms and text stats left out)."""
        query = "/stats?format=json"
        if prefix:
            query += "&filter=" + urllib.parse.quote("^" + re.escape(prefix))
        entries = json.loads(self._admin_text(query))["stats"]
        return {entry["name"]: entry["value"] for entry in entries
                if isinstance(entry.get("value"), int)}

    def metrics(self, prefix: str = "apikey.") -> dict[str, int]:
        """The filter's own counters and gauges (contract §9: the same names
        on both edges), named without the namespace Envoy puts before them
        in /stats (`wasmcustom.`, `dynamicmodulescustom.`):
        {"apikey.requests.allowed": 3, ...}."""
        namespace = self.filter_edge.metrics_namespace
        return {name.removeprefix(namespace): value
                for name, value in self.stats(namespace + prefix).items()}

    def prometheus(self) -> str:
        """The admin's /stats/prometheus page, as Prometheus scrapes it."""
        return self._admin_text("/stats/prometheus")

    def prometheus_as_stored(self) -> str:
        """/stats/prometheus with the metric names a Prometheus following
        envoy/observability/README.md stores (the edge's
        prometheus_relabel applied to each sample's name): what the alerts
        and the dashboard query, on either edge."""
        text = self.prometheus()
        pattern = self.filter_edge.prometheus_relabel
        if pattern is None:
            return text
        relabel = re.compile(pattern)

        def renamed(line: re.Match) -> str:
            # metric_relabel_configs anchors its regex at both ends of the name.
            match = relabel.fullmatch(line.group(2))
            return (line.group(1) or "") + (match.expand(r"\1") if match else line.group(2))

        return re.sub(r"^(# (?:TYPE|HELP) )?([a-zA-Z_:][a-zA-Z0-9_:]*)", renamed, text, flags=re.MULTILINE)

    def filter_failures(self) -> list[str]:
        """The lines of Envoy's log that say the filter failed (a trap, a
        panic: the edge's failure_markers), for tests that must show none."""
        markers = self.filter_edge.failure_markers
        return [line for line in self.log_text().splitlines() if any(marker in line for marker in markers)]

    def log_text(self) -> str:
        """Everything Envoy logged so far (its stdout access log included)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _log_tail(self) -> str:
        lines = self.log_text().splitlines()[-LOG_TAIL_LINES:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    def _admin_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin_address}{path}", timeout=5) as answer:
            return answer.read().decode()

    def _listener_port(self, name: str) -> int:
        listeners = json.loads(self._admin_text("/listeners?format=json"))["listener_statuses"]
        return _named(listeners, name, "listener")["local_address"]["socket_address"]["port_value"]

    def _listener_accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def _wait(self, what: str, condition: Callable[[], Any], timeout: float | None = None) -> None:
        """Polls `condition` until it is truthy; raises when Envoy exits or
        the deadline passes. Admin errors while Envoy starts count as 'not yet'."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self._envoy is not None and self._envoy.poll() is not None:
                raise GatewayError(f"Envoy exited ({self._envoy.returncode}) while waiting for {what}\n{self._log_tail()}")
            try:
                if condition():
                    return
            except OSError:  # not listening yet (URLError is an OSError too)
                pass
            if time.monotonic() > deadline:
                raise GatewayError(f"timed out waiting for {what}\n{self._log_tail()}")
            time.sleep(0.02)


def _read_line(stream, timeout: float) -> bytes:
    """One line from a child's pipe, or b"" if none comes in time."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return stream.readline()


def main(argv: Sequence[str]) -> None:
    """`harness.py write-ecds BOOTSTRAP CONFIG [ECDS_FILE]`: writes CONFIG (a
    JSON file) as the plugin configuration into the ECDS file BOOTSTRAP
    watches (or into ECDS_FILE: the compose fleet's directory), the way
    Gateway.push does. scripts/demo.sh uses it."""
    if len(argv) not in (3, 4) or argv[0] != "write-ecds":
        sys.exit(main.__doc__)
    bootstrap = load_bootstrap(Path(argv[1]))
    config = json.loads(Path(argv[2]).read_text(encoding="utf-8"))
    target = Path(argv[3]) if len(argv) == 4 else ecds_path(bootstrap)
    write_ecds(target, ecds_document(bootstrap, config))


if __name__ == "__main__":
    main(sys.argv[1:])
