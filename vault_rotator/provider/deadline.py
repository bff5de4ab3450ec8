"""A hard deadline for one HTTP attempt: httpx bounds each socket operation, not the whole.

A server (or proxy) that dribbles its status line and headers, one byte every half second,
never trips a connect, read or write timeout, and httpx has no total timeout. A
:class:`Watchdog` ends such an attempt: httpcore's ``trace`` request extension hands it the
attempt's network stream as soon as the TCP connection is open (the ``*.connect_tcp.complete``
event); it keeps a duplicate of the socket's descriptor and, at the deadline, shuts the
connection down. ``shutdown(SHUT_RDWR)`` acts on the connection, not on one descriptor, so it
wakes a read blocked in another thread at once, under TLS too; the read fails and the client
reports the attempt as out of time (:attr:`Watchdog.fired`).

The deadline runs from the watchdog's creation (the attempt's start): connecting is bounded
by the connect timeout, everything after it by the watchdog, so an attempt lasts at most its
deadline plus a thread wake-up. Not covered: name resolution (``getaddrinfo`` cannot be
interrupted). Without a socket (a mock transport) the watchdog does nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

CONNECTED_EVENT_SUFFIX = ".connect_tcp.complete"


class Watchdog:
    """Shuts one attempt's connection down ``seconds`` after its creation; see the module."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        self.fired = False

    def trace(self, event: str, info: Mapping[str, object]) -> None:
        """httpcore's ``trace`` hook: watch the connection once it is open."""
        if not event.endswith(CONNECTED_EVENT_SUFFIX):
            return
        stream = info.get("return_value")
        get_extra_info = getattr(stream, "get_extra_info", None)
        sock = get_extra_info("socket") if callable(get_extra_info) else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._closed or self._sock is not None:
                return
            self._sock = sock.dup()  # ours: stays valid whatever httpcore does with its own
            left = max(0.0, self._deadline - time.monotonic())
            self._timer = threading.Timer(left, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._closed or self._sock is None:
                return
            self.fired = True
            with contextlib.suppress(OSError):  # already closed by the peer
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Disarm: cancel the timer and drop the duplicate descriptor."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
