"""The daemon's HTTP listener: ``/healthz``, ``/readyz``, ``/metrics`` and the control API.

* ``GET /healthz``: 200 while the process serves.
* ``GET /readyz``: 200 when Vault is reachable and our token accepted (checked at most every
  5 s) and every account was ticked within three poll intervals; 503 naming what is wrong.
* ``GET /metrics``: Prometheus text format (prometheus-client).
* ``/v1/...``: the control API (:mod:`.control`).

Request bodies are limited to 64 KiB of JSON; answers are JSON (metrics aside).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from vault_rotator.daemon.control import Answer, Control
from vault_rotator.logs import redact_text

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024


class Ready:
    """Readiness: Vault checked (cached) and the scheduler ticking."""

    def __init__(
        self,
        vault_check: Callable[[], None],
        ticking: Callable[[], str | None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        cache_s: float = 5.0,
    ) -> None:
        self._vault_check = vault_check
        self._ticking = ticking
        self._monotonic = monotonic
        self._cache_s = cache_s
        self._checked: tuple[float, str | None] | None = None

    def problem(self) -> str | None:
        """What makes the daemon not ready, or None."""
        now = self._monotonic()
        if self._checked is None or now - self._checked[0] > self._cache_s:
            try:
                self._vault_check()
                self._checked = (now, None)
            except Exception as exc:
                self._checked = (now, f"vault: {redact_text(str(exc))}")
        return self._checked[1] or self._ticking()


class Listener:
    """A threaded HTTP server for health, metrics and control."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        control: Control,
        ready: Ready,
        metrics: Callable[[], bytes],
    ) -> None:
        handler = _handler(control, ready, metrics)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _handler(
    control: Control, ready: Ready, metrics: Callable[[], bytes]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vault-rotator"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http", request=self.requestline, status=args[1] if len(args) > 1 else "")

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                problem = ready.problem()
                body = b"ready\n" if problem is None else f"not ready: {problem}\n".encode()
                self._send(200 if problem is None else 503, body, "text/plain")
            elif self.path == "/metrics":
                self._send(200, metrics(), CONTENT_TYPE_LATEST)
            else:
                self._control("GET", {})

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._json(Answer(413, {"error": "request body too large or unreadable length"}))
                return
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._json(Answer(400, {"error": "the body must be a JSON object"}))
                return
            self._control("POST", body)

        def _control(self, method: str, body: dict[str, Any]) -> None:
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            try:
                answer = control.handle(method, self.path, token, body)
            except Exception as exc:
                log.warning("control request failed", error=redact_text(str(exc)))
                answer = Answer(500, {"error": "internal error"})
            self._json(answer)

        def _json(self, answer: Answer) -> None:
            payload = redact_text(json.dumps(answer.body, sort_keys=True)).encode()
            self._send(answer.status, payload, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
