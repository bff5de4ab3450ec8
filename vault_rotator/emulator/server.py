"""The HTTP edge: a threaded HTTP/1.1 server that hands each request to the app.

Keep-alive connections are tracked so that :meth:`HttpServer.stop` can close them: stopping
never waits on an idle client, and leaves no socket or thread behind.

Decisions: a body over 1 MiB is a 413 (up to 8 MiB is read and discarded first so the client
sees the answer; beyond that the connection is closed); ``Transfer-Encoding`` bodies are
refused with 411; an idle connection is closed after 30 s; the listen backlog is
:data:`LISTEN_BACKLOG` (the standard library's 5 reset clients in a burst of 200; the kernel
caps it at ``net.core.somaxconn``).
"""

from __future__ import annotations

import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import structlog

from vault_rotator.emulator.wire import BODY_CHUNK, Request, Response, error_response

App = Callable[[Request], Response]
MAX_BODY = 1024 * 1024
_DRAIN_LIMIT = 8 * 1024 * 1024
_CHUNK = 64 * 1024
LISTEN_BACKLOG = 1024

log = structlog.get_logger("vault_rotator.emulator")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out in two writes

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        self._server.untrack(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        request = Request.build(self.command, self.path, self.headers.items(), body)
        response = self._server.app(request)
        if response.drop:
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self._refuse(error_response(411, "send a Content-Length, not chunks"))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(error_response(400, "invalid Content-Length"))
            return None
        if length > MAX_BODY:
            if length <= _DRAIN_LIMIT:
                self._discard(length)
            self._refuse(error_response(413, f"request body over {MAX_BODY} bytes"))
            return None
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _CHUNK))
            if not chunk:
                return
            length -= len(chunk)

    def _refuse(self, response: Response) -> None:
        self.close_connection = True
        response.headers["Connection"] = "close"
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
        if response.status not in (204, 304):
            self.send_header("Content-Length", str(len(response.body)))
        if response.trickle:
            real, self.wfile = self.wfile, _Trickle(self.wfile, response.trickle)
            try:
                self.end_headers()
            finally:
                self.wfile = real
        else:
            self.end_headers()
        if response.status in (204, 304):
            return
        if not response.trickle_body:
            self.wfile.write(response.body)
            return
        for start in range(0, len(response.body), BODY_CHUNK):
            self.wfile.write(response.body[start : start + BODY_CHUNK])
            self.wfile.flush()
            time.sleep(response.trickle_body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the recorder counts requests and logs inference answers."""


class _Trickle(io.BufferedIOBase):
    """A writer that sends one byte at a time, ``pause`` seconds apart (the trickle fault)."""

    def __init__(self, inner: io.BufferedIOBase, pause: float) -> None:
        super().__init__()
        self._inner = inner
        self._pause = pause

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        chunk = bytes(data)
        for byte in chunk:
            self._inner.write(bytes((byte,)))
            time.sleep(self._pause)
        return len(chunk)


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout test, a dropped connection) is not an error at all.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            return
        log.warning(
            "emulator_connection_error", client=str(client_address), error=type(error).__name__
        )


class HttpServer:
    """Serves ``app`` (a callable Request -> Response) on ``host:port`` in a thread."""

    def __init__(self, app: App, host: str, port: int) -> None:
        self._server = _Server((host, port), app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # how soon stop() is noticed
            name=f"arouter-emulator-{self.port}",
            daemon=True,
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close open connections, and join every thread."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()
