"""The upstream of the e2e tests: answers every request with 200 and a JSON
echo of what it received, so a test can assert on exactly what Envoy
forwarded (path as sent on the wire, every header in order, repeats kept).

    python3 echo_upstream.py --port 8080 [--name sandbox]

It prints `listening on HOST:PORT` once bound (with --port 0 the system
picks the port, so a harness can start it without racing for one).
The body is {"method": ..., "path": <raw request target>, "headers":
[[name, value], ...]}. Header bytes are decoded as latin-1, so every byte
survives the round trip. HEAD gets the headers of that answer and no body:
a body there would break Envoy's upstream connection and fail the next
request with 502. Every answer carries the marker header; its value is the
upstream's --name ("1" unless given), so a test can tell the production
upstream from the sandbox one.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# On every answer, so a client can tell the upstream's answers from Envoy's.
MARKER_HEADER = "x-echo-upstream"


class EchoHandler(BaseHTTPRequestHandler):
    """Answers any method; keeps connections alive like a real upstream."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the
    # body then waits for a delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def handle_one_request(self):
        """Dispatches every method (the base class only knows do_<METHOD>)."""
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        self._echo()
        self.wfile.flush()

    def _echo(self):
        self._drain_body()
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            # http.client decoded the header block as latin-1, byte for byte.
            "headers": [[name, value] for name, value in self.headers.items()],
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header(MARKER_HEADER, self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self):
        """Reads the request body so the connection can carry the next request."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    return
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)

    def log_message(self, format, *args):
        """Silent: Envoy's access log already records every request."""


class EchoServer(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when Envoy's workers open
    # dozens at once (a burst admitted under load); a dropped SYN is retried
    # after 1 s, which is Envoy's connect_timeout, and the client gets 503.
    request_queue_size = 1024
    # The marker header's value (--name).
    name = "1"


def serve(port: int, host: str = "127.0.0.1", name: str = "1") -> ThreadingHTTPServer:
    """Binds the echo server; the caller runs serve_forever() (or a thread does)."""
    server = EchoServer((host, port), EchoHandler)
    server.name = name
    server.daemon_threads = True
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="1", help="the marker header's value on every answer")
    args = parser.parse_args()
    server = serve(args.port, args.host, args.name)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
