"""A small AWS Lambda endpoint over real HTTP, for the reward-function probe.

moto runs Lambda functions in Docker; this server runs Python handlers in-process instead. It
speaks the Lambda ``Invoke`` API as botocore calls it (``POST
/2015-03-31/functions/<name>/invocations``, the payload as the body), so the real boto3 client
(through the Amazon provider's LambdaHook) talks to it unchanged. A function is registered by
name with a handler (``fn(event)`` or ``fn(event, context)``) and answers as Lambda does:

- the handler's return value as JSON, status 200;
- an exception: status 200 with ``X-Amz-Function-Error: Unhandled`` and
  ``{"errorMessage", "errorType", "stackTrace"}``;
- a handler still running after the function's ``timeout``: the same function error with
  ``Task timed out after N.NN seconds`` (its thread is left to finish on its own);
- more calls at once than its ``concurrency`` (reserved concurrency; 0 throttles every call):
  429 ``TooManyRequestsException``, and `throttled` is set;
- a function the caller may not invoke (``denied``): 403 ``AccessDeniedException``;
- an unknown name: 404 ``ResourceNotFoundException``.

The function may be named by its name or its ARN (any region and account).
"""

from __future__ import annotations

import inspect
import json
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

ACCOUNT = "123456789012"
REGION = "us-east-1"
PATH_PREFIX = "/2015-03-31/functions/"


def arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


@dataclass
class FakeFunction:
    name: str
    handler: Callable[..., Any]
    timeout: float = 3.0
    concurrency: int | None = None
    """Reserved concurrency: calls at once (None: unlimited; 0: every call is throttled)."""
    denied: bool = False
    running: int = 0
    payloads: list[Any] = field(default_factory=list)


class FakeLambda:
    """The server; `url` is its endpoint (for an Airflow connection's ``endpoint_url``)."""

    def __init__(self) -> None:
        self.functions: dict[str, FakeFunction] = {}
        self.throttled = threading.Event()
        """Set once a call was answered 429."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        timeout: float = 3.0,
        concurrency: int | None = None,
        denied: bool = False,
    ) -> str:
        """Register a function; return its ARN."""
        self.functions[name] = FakeFunction(name, handler, timeout, concurrency, denied)
        return arn(name)

    def start(self) -> FakeLambda:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- one call ----------------------------------------------------------------------

    def invoke(self, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for a call of ``target`` (a name or an ARN)."""
        name = target.rsplit(":function:", 1)[-1].split(":")[0]
        function = self.functions.get(name)
        if function is None:
            return _error(404, "ResourceNotFoundException", f"Function not found: {arn(name)}")
        if function.denied:
            return _error(
                403,
                "AccessDeniedException",
                f"User: arn:aws:iam::{ACCOUNT}:user/probe is not authorized to perform: "
                f"lambda:InvokeFunction on resource: {arn(name)} because no identity-based "
                "policy allows the lambda:InvokeFunction action",
            )
        with self._lock:
            if function.concurrency is not None and function.running >= function.concurrency:
                self.throttled.set()
                return _error(429, "TooManyRequestsException", "Rate Exceeded.")
            function.running += 1
        try:
            event = json.loads(body or b"null")
            function.payloads.append(event)
            return self._run(function, event)
        finally:
            with self._lock:
                function.running -= 1

    def _run(self, function: FakeFunction, event: Any) -> tuple[int, dict[str, str], bytes]:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = _call(function.handler, event)
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(function.timeout)
        if worker.is_alive():
            request = uuid.uuid4()
            return _function_error(
                {
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"RequestId: {request} Error: Task timed out after "
                    f"{function.timeout:.2f} seconds",
                }
            )
        if "error" in outcome:
            exc = outcome["error"]
            return _function_error(
                {
                    "errorMessage": str(exc),
                    "errorType": type(exc).__name__,
                    "requestId": str(uuid.uuid4()),
                    "stackTrace": traceback.format_tb(exc.__traceback__),
                }
            )
        # Python's json writes NaN as Lambda's Python runtime does.
        return 200, {"X-Amz-Executed-Version": "$LATEST"}, json.dumps(outcome["value"]).encode()


def _call(handler: Callable[..., Any], event: Any) -> Any:
    required = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return handler(event, None) if len(required) == 2 else handler(event)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return status, {"x-amzn-ErrorType": code, "Content-Type": "application/json"}, body


def _function_error(payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    headers = {"X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST"}
    return 200, headers, json.dumps(payload).encode()


def _handler_class(fake: FakeLambda) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if not (path.startswith(PATH_PREFIX) and path.endswith("/invocations")):
                self._answer(*_error(400, "InvalidRequestContentException", f"no route {path}"))
                return
            target = unquote(path[len(PATH_PREFIX) : -len("/invocations")])
            self._answer(*fake.invoke(target, body))

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_lambda() -> Iterator[FakeLambda]:
    server = FakeLambda().start()
    try:
        yield server
    finally:
        server.close()
