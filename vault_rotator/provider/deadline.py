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

One thread (:class:`_Reaper`, started on first use) keeps every armed watchdog's deadline in a
heap and fires those that come due: a thread per request would cost more than the request.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
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
        _reaper().arm(self._deadline, self)

    def _fire(self) -> None:
        with self._lock:
            if self._closed or self._sock is None:
                return
            self.fired = True
            with contextlib.suppress(OSError):  # already closed by the peer
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Disarm: drop the duplicate descriptor (the reaper then skips this watchdog)."""
        with self._lock:
            self._closed = True
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


class _Reaper:
    """One thread firing every armed watchdog whose deadline has come."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()
        thread = threading.Thread(target=self._run, name="arouter-watchdog", daemon=True)
        thread.start()

    def arm(self, deadline: float, watchdog: Watchdog) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watchdog))
            if self._heap[0][2] is watchdog:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                _, _, watchdog = heapq.heappop(self._heap)
            watchdog._fire()  # a closed one does nothing


_REAPER: _Reaper | None = None
_REAPER_LOCK = threading.Lock()


def _reaper() -> _Reaper:
    global _REAPER  # noqa: PLW0603 (one reaper per process, started on first use)
    with _REAPER_LOCK:
        if _REAPER is None:
            _REAPER = _Reaper()
        return _REAPER
