"""S3 stores for the tests, made of the tests' moto server and a real HTTP proxy in front of it.

Some S3-compatible stores accept ``If-None-Match: *`` on a PUT and store the object anyway.
`S3HeaderProxy` with ``strip=("If-None-Match",)`` makes one: it forwards every request (any
method, body and headers) to the upstream endpoint over real HTTP, minus the headers it was told
to strip, and sends the upstream answer back unchanged. Point ``TUNELOOP_S3_ENDPOINT_URL`` at
``proxy.endpoint`` and the real S3 client talks to a store that never sees the condition.

The other way round, ``atomic_conditional_puts=True`` makes moto as strict as S3: moto checks
the condition and then stores the object without a lock, so two conditional PUTs of one key that
arrive together can both succeed (about one race of 20 writers in 300), where S3 decides them
atomically. The proxy forwards conditional PUTs one at a time, which gives moto that guarantee.

``stripped`` counts the requests that carried a stripped header and ``conditional_puts`` those
that carried ``If-None-Match``, so a test can tell that its writes really went through the proxy.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# Headers about one connection, which a proxy answers for itself instead of passing them on.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Room for many clients connecting at once: with the default backlog of 5, a burst of
    # writers has connections dropped and retried a second later.
    request_queue_size = 128


class S3HeaderProxy:
    """Forwards HTTP requests to ``upstream`` without the ``strip`` headers (case-insensitive),
    conditional PUTs one at a time when ``atomic_conditional_puts``.

    A context manager: entering starts it on a free loopback port, leaving stops it.
    """

    def __init__(
        self,
        upstream: str,
        *,
        strip: Iterable[str] = (),
        atomic_conditional_puts: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.strip = frozenset(name.lower() for name in strip)
        self.atomic_conditional_puts = atomic_conditional_puts
        self.stripped = 0
        self.conditional_puts = 0
        self._count_lock = threading.Lock()
        # Held around a conditional PUT's whole round trip upstream, in atomic mode.
        self.conditional_put_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3HeaderProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def forwarded_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` without the stripped and hop-by-hop ones, counting what it saw."""
        kept = []
        names = set()
        for name, value in headers:
            names.add(name.lower())
            if name.lower() not in self.strip and name.lower() not in _HOP_BY_HOP:
                kept.append((name, value))
        with self._count_lock:
            self.stripped += bool(names & self.strip)
            self.conditional_puts += "if-none-match" in names
        return kept

    def serialises(self, method: str, headers: Iterable[tuple[str, str]]) -> bool:
        """Whether this request waits for the conditional PUTs before it."""
        return (
            self.atomic_conditional_puts
            and method == "PUT"
            and any(name.lower() == "if-none-match" for name, _ in headers)
        )


def _handler_for(proxy: S3HeaderProxy) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps the client's connections open between requests, as S3 does.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: with Nagle's algorithm on, each answer
        # would wait for the client's delayed acknowledgement (tens of milliseconds).
        disable_nagle_algorithm = True

        def do_request(self) -> None:
            body = self._request_body()
            if proxy.serialises(self.command, self.headers.items()):
                with proxy.conditional_put_lock:
                    self._forward(body)
            else:
                self._forward(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_request

        def _forward(self, body: bytes) -> None:
            headers = proxy.forwarded_headers(self.headers.items())
            upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=60
            )
            try:
                upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in headers:
                    if name.lower() != "content-length":
                        upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                answer = upstream.getresponse()
                payload = answer.read()
                self._answer(answer, payload)
            finally:
                upstream.close()

        def _request_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_body()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _chunked_body(self) -> bytes:
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk

        def _answer(self, answer: http.client.HTTPResponse, payload: bytes) -> None:
            self.send_response_only(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            # A HEAD answer announces the length of the body it does not send.
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests' output is not the place for an access log."""

    return Forward
