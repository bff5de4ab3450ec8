"""The daemon's HTTP listeners: ``/healthz``, ``/readyz``, ``/metrics`` and the control API.

One :class:`Listener` serves what it is given: the daemon runs one for everything on
``--listen``, or, with ``--metrics-listen``, one for the probes and metrics (plain HTTP) and one
for the control API alone; a path the listener does not serve is a 404. A listener given
:class:`TlsFiles` speaks HTTPS (the handshake happens in the connection's thread, within the
read deadline), and :meth:`Listener.reload_tls` swaps in the files' current contents for new
connections, keeping the old certificate when the new one does not load: on SIGHUP, and by
itself when the files' modification times change (checked at most every :data:`TLS_WATCH_S`
on accept: Kubernetes updates a mounted Secret in place and sends no signal).

* ``GET /healthz``: 200 while the process serves.
* ``GET /readyz``: 200 when Vault is reachable and our token accepted (checked at most every
  5 s): this replica can serve, whether or not it ticks an account; 503 naming what is wrong.
* ``GET /metrics``: Prometheus text format (prometheus-client).
* ``/v1/...``: the control API (:mod:`.control`).

Every other answer, and every error, is JSON on one line: ``{"error": "..."}`` for errors.
One request per connection (HTTP/1.0, ``Connection: close``). Limits, so that no client can
hold the daemon or make it print a traceback:

* listen backlog :data:`LISTEN_BACKLOG` (the kernel caps it at ``net.core.somaxconn``), and at
  most :data:`MAX_CONNECTIONS` connections served at once: beyond, an immediate 503;
* one deadline per connection, ``read_timeout`` (default :data:`READ_TIMEOUT_S`) after it was
  accepted: the TLS handshake, request line, headers and body must all arrive by then, however
  slowly they trickle in; else 408 (written within :data:`LATE_WRITE_S`) and the connection is
  closed at once, so its slot is free at the deadline. Lingering after an answer (draining
  unread input so that the close does not reset the answer away) also ends by the deadline;
  writing an answer to a request that did arrive is bounded by ``read_timeout``;
* request line and headers together at most :data:`MAX_HEAD` bytes (414 for the line alone,
  else 431), and at most 100 header lines (the standard library's limit, 431);
* a body is framed by one plain decimal ``Content-Length`` (``Transfer-Encoding`` 411,
  anything else 400), at most :data:`MAX_BODY` bytes (413; up to :data:`DRAIN_LIMIT` is read
  and discarded first so the client sees the answer), and must be a JSON object (400, deep
  nesting included); a body shorter than announced is a 408 once the time is up.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from vault_rotator.daemon.control import Answer, Control
from vault_rotator.display import redact_text
from vault_rotator.errors import ConfigError
from vault_rotator.files import why_not_regular

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024
MAX_HEAD = 64 * 1024
DRAIN_LIMIT = 1024 * 1024
READ_TIMEOUT_S = 10.0
LINGER_S = 2.0  # after answering, how long unread input is drained (never past the deadline)
LATE_WRITE_S = 0.25  # writing the 408 once the deadline has passed
LISTEN_BACKLOG = 1024
MAX_CONNECTIONS = 256
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
TLS_WATCH_S = 30.0
_DIGITS = re.compile(r"[0-9]{1,18}")
_SHOWN = 200  # characters of a request line in an error message or a log line


class Ready:
    """Readiness: "this replica can serve". Vault reachable with our token (checked at most
    every ``cache_s``; the policies are loaded before the listener starts, and a reload keeps
    the old ones on failure). Whether some replica ticks each account is a metric and an
    alert, not readiness: a follower must stay in the Service (docs/high-availability.md)."""

    def __init__(
        self,
        vault_check: Callable[[], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        cache_s: float = 5.0,
    ) -> None:
        self._vault_check = vault_check
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
        return self._checked[1]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A PEM certificate chain and its private key, read again on each (re)load."""

    cert_file: str
    key_file: str

    def stamp(self) -> tuple[int, int]:
        """The files' modification times (0 for one that cannot be read)."""
        times = []
        for path in (self.cert_file, self.key_file):
            try:
                times.append(os.stat(path).st_mtime_ns)
            except OSError:
                times.append(0)
        return times[0], times[1]

    def check(self) -> None:
        """ConfigError unless both are regular files: never open a FIFO (it would block the
        start, or a reload in the accept loop) or a device."""
        for what, path in (("certificate", self.cert_file), ("key", self.key_file)):
            if (why := why_not_regular(path)) is not None:
                raise ConfigError(f"TLS {what} {path}: {why}")

    def context(self) -> ssl.SSLContext:
        """A server context (TLS 1.2 at least) with the files' current contents."""
        self.check()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # A pass-phrase-protected key must fail, not prompt on a terminal (and hang).
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_pass_phrase)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS certificate {self.cert_file} / key {self.key_file} do not load: "
                f"{type(exc).__name__}: {str(exc)[:120]}"
            ) from exc
        return context


def _no_pass_phrase() -> str:
    raise ConfigError("the TLS key is protected by a pass phrase: give an unencrypted key")


class Listener:
    """A threaded HTTP(S) server for whichever of health, metrics and control it is given."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        control: Control | None = None,
        ready: Ready | None = None,
        metrics: Callable[[], bytes] | None = None,
        tls: TlsFiles | None = None,
        read_timeout: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if (ready is None) != (metrics is None):
            raise ValueError("a listener serves the probes and metrics together, or neither")
        self.tls = tls
        context = tls.context() if tls else None  # before binding: a bad file leaks no socket
        handler = _handler(control, ready, metrics)
        try:
            self.server = _Server(
                (host, port), handler, read_timeout=read_timeout, max_connections=max_connections
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.server.tls_context = context
        self.server.before_accept = self._watch_tls
        self._tls_stamp = tls.stamp() if tls else (0, 0)
        self._tls_checked = time.monotonic()
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def address(self) -> str:
        host, port = str(self.server.server_address[0]), self.server.server_address[1]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def _watch_tls(self) -> None:
        """Reload the certificate when its files changed (at most every TLS_WATCH_S)."""
        if self.tls is None or time.monotonic() - self._tls_checked < TLS_WATCH_S:
            return
        self._tls_checked = time.monotonic()
        stamp = self.tls.stamp()
        if stamp != self._tls_stamp:
            self._tls_stamp = stamp
            self.reload_tls()

    def reload_tls(self) -> bool:
        """Load the certificate files again for new connections; keep the old ones on failure."""
        if self.tls is None:
            return True
        try:
            self.server.tls_context = self.tls.context()
        except ConfigError as exc:
            log.warning("TLS reload refused; keeping the old certificate", error=str(exc))
            return False
        log.info("TLS certificate reloaded", cert_file=self.tls.cert_file)
        return True

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _ReadTimeout(Exception):
    """The request did not arrive whole within the read timeout."""


class _HeadTooLarge(Exception):
    """The request line and headers went over MAX_HEAD bytes."""


class _DeadlineReader(io.RawIOBase):
    """A socket's input bounded by a total deadline and, until ``budget`` is None, a byte count.

    Every ``recv`` waits at most the time left, so a client trickling one byte at a time
    cannot stretch the request past the deadline.
    """

    def __init__(self, sock: socket.socket, deadline: float, budget: int) -> None:
        self._sock = sock
        self.deadline = deadline
        self.budget: int | None = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _ReadTimeout
        view = memoryview(buffer).cast("B")
        if self.budget is not None:
            if self.budget <= 0:
                raise _HeadTooLarge
            view = view[: self.budget]
        self._sock.settimeout(left)
        try:
            count = self._sock.recv_into(view)
        except TimeoutError as exc:
            raise _ReadTimeout from exc
        if self.budget is not None:
            self.budget -= count
        return count


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True
    tls_context: ssl.SSLContext | None = None
    before_accept: Callable[[], None] = staticmethod(lambda: None)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        read_timeout: float,
        max_connections: int,
    ) -> None:
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[Any, float] = {}  # connection -> accepted + read_timeout
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        """Accept; with TLS, wrap without handshaking (the handler's thread does that)."""
        self.before_accept()
        sock, address = super().get_request()
        context = self.tls_context
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Runs in the accept loop right after the accept: the connection's deadline starts."""
        if not self._slots.acquire(blocking=False):
            if not isinstance(request, ssl.SSLSocket):  # a TLS answer needs a handshake, which
                _refuse_busy(request)  # would hold the accept loop: TLS clients are just closed
            socketserver.TCPServer.shutdown_request(self, request)
            return
        self._deadlines[request] = time.monotonic() + self.read_timeout
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._deadlines.pop(request, None)
            self._slots.release()
            raise

    def deadline(self, request: Any) -> float:
        """When ``request``'s connection must have been read (its accept + read_timeout)."""
        return self._deadlines.get(request, time.monotonic() + self.read_timeout)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._deadlines.pop(request, None)
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        """Close after a lingering drain: unread input would turn our close into a reset
        that can destroy the answer before the client reads it. The linger ends at the
        connection's deadline; past it, only input already here is drained."""
        until = min(time.monotonic() + LINGER_S, self.deadline(request))
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            _drain(request, until, DRAIN_LIMIT)
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away: nothing to report
            return
        log.warning("http connection failed", error=type(error).__name__)


def _drain(sock: socket.socket, deadline: float, limit: int) -> None:
    """Discard input until the client closes, ``limit`` bytes, or ``deadline``; past the
    deadline, what has already arrived (non-blocking: an OSError once there is none)."""
    while limit > 0:
        sock.settimeout(max(deadline - time.monotonic(), 0.0))
        chunk = sock.recv(min(limit, 64 * 1024))
        if not chunk:
            return
        limit -= len(chunk)


def _refuse_busy(request: socket.socket) -> None:
    body = b'{"error": "too many connections; retry shortly"}'
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        request.settimeout(0.5)
        request.sendall(head.encode() + body)


def _parse_json(raw: bytes) -> dict[str, Any] | Answer:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except RecursionError:
        return Answer(400, {"error": "the body is not usable JSON: nested too deeply"})
    except json.JSONDecodeError as exc:
        return Answer(400, {"error": f"the body is not JSON: {exc.msg} at byte {exc.pos}"})
    except ValueError:  # not UTF-8, an integer of thousands of digits
        return Answer(400, {"error": "the body is not usable JSON (encoding or number size)"})
    if not isinstance(value, dict):
        return Answer(400, {"error": "the body must be a JSON object"})
    return value


def _bearer(header: str) -> str | None:
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _handshake(sock: socket.socket, deadline: float) -> None:
    """Finish a TLS handshake before ``deadline``; _ReadTimeout or OSError otherwise."""
    if not isinstance(sock, ssl.SSLSocket):
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise _ReadTimeout
    sock.settimeout(left)
    try:
        sock.do_handshake()
    except TimeoutError as exc:
        raise _ReadTimeout from exc


def _handler(
    control: Control | None, ready: Ready | None, metrics: Callable[[], bytes] | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vault-rotator"
        sys_version = ""
        default_request_version = "HTTP/1.0"  # a two-word request line still gets headers

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by a reader with a deadline
            server = cast(_Server, self.server)
            self._timeout = server.read_timeout
            self._write_timeout = self._timeout
            self._reader = _DeadlineReader(self.connection, server.deadline(self.request), MAX_HEAD)
            self.rfile = io.BufferedReader(self._reader)
            self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
            self._answered = False

        def handle(self) -> None:
            self.close_connection = True
            in_line = True
            try:
                _handshake(self.connection, self._reader.deadline)
            except (_ReadTimeout, OSError):  # a plain-HTTP client, a scanner, a slow one
                return
            try:
                self.raw_requestline = self.rfile.readline(MAX_HEAD + 1)
                in_line = False
                self._serve()
            except _ReadTimeout:
                self._write_timeout = LATE_WRITE_S  # the slot is due back now
                self._fail(408, f"the request did not arrive within {self._timeout:g} s")
            except _HeadTooLarge:
                self._fail(414 if in_line else 431, f"request line and headers over {MAX_HEAD}")
            except OSError:  # the client hung up or stopped reading: nobody to answer
                return
            except Exception as exc:
                log.warning("http request failed", error=redact_text(f"{type(exc).__name__}"))
                self._fail(500, "internal error")

        def _serve(self) -> None:
            if not self.raw_requestline:
                return  # connected, sent nothing, hung up
            if not self.parse_request():
                self._fail(400, "empty request line")  # unless parse_request answered
                return
            self._reader.budget = None
            body = self._body()
            if body is None:
                return
            if self.path in HEALTH_PATHS:
                self._health()
                return
            if control is None:
                self._fail(404, f"{self.path[:_SHOWN]} is not served here (the control API "
                           "listens on --listen)")  # fmt: skip
                return
            parsed = _parse_json(body)
            if isinstance(parsed, Answer):
                self._json(parsed)
                return
            token = _bearer(str(self.headers.get("Authorization") or ""))
            try:
                answer = control.handle(self.command, self.path, token, parsed)
            except Exception as exc:
                log.warning("control request failed", error=redact_text(str(exc)))
                answer = Answer(500, {"error": "internal error"})
            self._json(answer)

        def _body(self) -> bytes | None:
            """The request body, or None once a 4xx has answered a bad framing."""
            if self.headers.get("Transfer-Encoding") is not None:
                self._fail(411, "send a Content-Length, not Transfer-Encoding")
                return None
            lengths = {str(v).strip() for v in self.headers.get_all("Content-Length") or []}
            if len(lengths) > 1:
                self._fail(400, "conflicting Content-Length headers")
                return None
            text = lengths.pop() if lengths else "0"
            if not text.isascii() or not text.isdigit():
                self._fail(400, "Content-Length is not a number of bytes")
                return None
            length = int(text) if _DIGITS.fullmatch(text) else DRAIN_LIMIT + 1
            if length > MAX_BODY:
                if length <= DRAIN_LIMIT:
                    self._discard(length)
                self._fail(413, f"the body is over {MAX_BODY} bytes")
                return None
            body = self.rfile.read(length)
            if len(body) < length:
                self._fail(400, "the body ended before its Content-Length")
                return None
            return body

        def _discard(self, length: int) -> None:
            while length > 0:
                chunk = self.rfile.read(min(length, 64 * 1024))
                if not chunk:
                    return
                length -= len(chunk)

        def _health(self) -> None:
            if ready is None or metrics is None:
                self._fail(404, f"{self.path} is served on the metrics listener")
            elif self.command not in ("GET", "HEAD"):
                self._json(Answer(405, {"error": f"use GET for {self.path}"}, {"Allow": "GET"}))
            elif self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                problem = ready.problem()
                body = b"ready\n" if problem is None else f"not ready: {problem}\n".encode()
                self._send(200 if problem is None else 503, body, "text/plain")
            else:
                self._send(200, metrics(), CONTENT_TYPE_LATEST)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """The standard library's own refusals (bad request line, too many headers), as JSON."""
            text = message or self.responses.get(code, ("error",))[0]
            self._fail(code, text)

        def _fail(self, status: int, message: str) -> None:
            if self._answered:
                return
            if len(message) > _SHOWN:
                message = message[:_SHOWN] + "..."
            with contextlib.suppress(OSError):
                self._json(Answer(status, {"error": message}))

        def _json(self, answer: Answer) -> None:
            payload = answer.payload
            if payload is None:
                payload = redact_text(json.dumps(answer.body, sort_keys=True)).encode()
            self._send(answer.status, payload, "application/json", answer.headers)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            self._answered = True
            self.connection.settimeout(self._write_timeout)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            status = args[1] if len(args) > 1 else ""
            log.debug("http", request=self.requestline[:_SHOWN], status=status)

    return Handler
