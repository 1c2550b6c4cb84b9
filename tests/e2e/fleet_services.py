"""The services behind fleet-wide limits (contract §6), for the e2e tests
and the fleet latency benchmark: a private redis-server, the project's
rate-limit server (crates/apikey-ratelimit), and a listener that accepts
connections and never answers.

Each is a context manager that starts its process on a free port of
127.0.0.1, waits until it serves, and stops it on exit (SIGTERM, then
SIGKILL), so no test leaves a process behind. A missing tool fails
loudly: scripts/setup.sh installs redis-server.

Redis requires a password, as in every stack the project ships: a fresh
random one per Redis, in a configuration file (never on a command line,
which `ps` shows), and the rate-limit server reads it from a file.

    with Redis(workdir) as redis, \
         RateLimitServer(build_ratelimit(), redis.url, workdir, password_file=redis.password_file) as server:
        Gateway(module, config, ratelimit_port=server.port)
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import REPO_ROOT, free_port

RATELIMIT_BINARY = REPO_ROOT / "target" / "release" / "apikey-ratelimit"


class ServiceError(RuntimeError):
    """A service did not start, or did not stop cleanly."""


@functools.cache
def build_ratelimit() -> Path:
    """Builds the release rate-limit server once per session
    (APIKEY_RATELIMIT_BIN names a prebuilt one instead)."""
    override = os.environ.get("APIKEY_RATELIMIT_BIN")
    if override:
        return Path(override).resolve()
    command = ["cargo", "build", "--release", "-p", "apikey-ratelimit"]
    built = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise ServiceError(f"{' '.join(command)} failed:\n{built.stderr[-4000:]}")
    return RATELIMIT_BINARY


def _stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    """Stops `process` with `sig`, then SIGKILL; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def _wait(what: str, condition, timeout: float = 15.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{what}: the process exited ({process.returncode})")
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Redis:
    """redis-server on a free port of 127.0.0.1: a password, protected
    mode, no persistence, no system service."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = 0
        self.password = secrets.token_hex(24)
        self.password_file = workdir / "redis-password"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        """Writes `text` to `path`, readable by this user only."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)

    def __enter__(self) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server not found on PATH: run scripts/setup.sh (setup.d/redis.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if any(c in str(self.workdir) for c in '"\\\n'):
            raise ServiceError(f"cannot quote {self.workdir} in redis.conf")
        self.port = free_port()
        self._write_private(self.password_file, self.password + "\n")
        config = self.workdir / "redis.conf"
        self._write_private(config, "\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", 'save ""', "appendonly no",
            f'dir "{self.workdir}"', f"requirepass {self.password}", ""]))
        # The configuration file is the only argument: the password is in
        # it, not on the command line.
        with open(self.workdir / "redis.log", "wb") as log:
            self._process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait("redis-server to answer PING", lambda: self.command("PING") == "+PONG", process=self._process)
        except BaseException:
            _stop(self._process)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        _stop(self._process)

    @property
    def pid(self) -> int:
        return self._process.pid

    def command(self, *words: str) -> str:
        """One inline command after AUTH; the first line of its reply."""
        auth, reply = self._exchange(["AUTH", self.password], list(words))
        if auth != "+OK":
            raise ServiceError(f"redis-server refused its own password: {auth}")
        return reply

    def unauthenticated(self, *words: str) -> str:
        """One inline command without AUTH, as any client on the network
        could send it; the first line of the reply."""
        return self._exchange(list(words))[0]

    def _exchange(self, *commands: list[str]) -> list[str]:
        """Sends inline commands on one connection; the first line of each
        reply (the commands used here answer in one line)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(" ".join(words).encode() + b"\r\n" for words in commands))
            reply = b""
            while reply.count(b"\r\n") < len(commands):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        lines = reply.decode().split("\r\n")
        return (lines + [""] * len(commands))[:len(commands)]


class RateLimitServer:
    """apikey-ratelimit on free ports (grpc and admin), or on `port`."""

    def __init__(self, binary: Path, redis_url: str, workdir: Path, port: int = 0,
                 redis_timeout_ms: int = 1000, *, password_file: Path | None, no_auth: bool = False):
        """`password_file` is the Redis password's file (Redis.password_file);
        None asks for no password, which the server refuses unless `no_auth`
        adds --redis-no-auth."""
        self.binary = binary
        self.redis_url = redis_url
        self.password_file = password_file
        self.no_auth = no_auth
        self.workdir = workdir
        self.requested_port = port
        self.redis_timeout_ms = redis_timeout_ms
        self.port = 0
        self.admin_port = 0
        self.exit_code: int | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> RateLimitServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [str(self.binary), "--listen", f"127.0.0.1:{self.requested_port}",
                   "--admin", "127.0.0.1:0", "--redis", self.redis_url,
                   "--redis-timeout-ms", str(self.redis_timeout_ms)]
        if self.password_file is not None:
            command += ["--redis-password-file", str(self.password_file)]
        if self.no_auth:
            command.append("--redis-no-auth")
        with open(self.workdir / "ratelimit.log", "ab") as log:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        try:
            line = self._read_line(10)
            match = re.fullmatch(rb"apikey-ratelimit listening grpc=127\.0\.0\.1:(\d+) admin=127\.0\.0\.1:(\d+)\n", line)
            if not match:
                raise ServiceError(f"apikey-ratelimit did not start: {line!r}, see {self.workdir}/ratelimit.log")
            self.port, self.admin_port = int(match.group(1)), int(match.group(2))
        except BaseException:
            _stop(self._process)
            raise

    def _read_line(self, timeout: float) -> bytes:
        import selectors
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return b""
        return self._process.stdout.readline()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def log(self) -> str:
        """What the server wrote on stderr so far."""
        return (self.workdir / "ratelimit.log").read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM: the server must exit 0 (its clean shutdown)."""
        self.exit_code = _stop(self._process)
        return self.exit_code

    def kill(self) -> None:
        """SIGKILL: the server dies mid-flight."""
        _stop(self._process, signal.SIGKILL)

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[str, int]:
        """The counters of /metrics, by name without the `apikey_ratelimit_`
        prefix and `_total` suffix (requests, over_limit, redis_errors, ...)."""
        status, text = self.admin("/metrics")
        if status != 200:
            raise ServiceError(f"/metrics answered {status}: {text}")
        values = {}
        for line in text.splitlines():
            match = re.fullmatch(r"apikey_ratelimit_(\w+)_total (\d+)", line)
            if match:
                values[match.group(1)] = int(match.group(2))
        return values


class SilentListener:
    """Accepts TCP connections on a free port and never answers: a
    rate-limit service that hangs. Connections are held until exit."""

    def __init__(self):
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.port = 0

    def __enter__(self) -> SilentListener:
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = self._socket.getsockname()[1]
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._connections.append(connection)

    @property
    def accepted(self) -> int:
        return len(self._connections)

    def __exit__(self, *exc_info) -> None:
        # shutdown() wakes the thread blocked in accept().
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        self._thread.join(timeout=5)
        for connection in self._connections:
            connection.close()
