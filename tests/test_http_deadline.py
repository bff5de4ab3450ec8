"""One deadline for a stalled request (issue 20 item 6): a connection whose request has not
arrived whole ``read_timeout`` after it was accepted is answered 408 and closed, and its slot is
free again by then, however the client dribbles its headers; measured from the outside, on raw
sockets. Before, a slot came back 2 s (the linger) or more after the deadline, and an
unauthenticated client reopening every ~12 s kept the control API at 503."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vault_rotator.daemon.http import READ_TIMEOUT_S, Listener, Ready

MARGIN_S = 0.5  # thread scheduling and the 408's write, on a loaded 2-core machine


@contextlib.contextmanager
def listening(read_timeout: float, max_connections: int = 2) -> Iterator[tuple[str, int]]:
    """A started listener (probes and metrics: the same slots as the control API)."""
    listener = Listener(
        "127.0.0.1",
        0,
        ready=Ready(lambda: None),
        metrics=lambda: b"# none\n",
        read_timeout=read_timeout,
        max_connections=max_connections,
    )
    listener.start()
    try:
        host, port = listener.server.server_address[:2]
        yield str(host), int(port)
    finally:
        listener.stop()


class Dribbler:
    """A client that sends a request line, then a header byte every ``every`` seconds, never
    ends its headers, never reads and never closes until told to."""

    def __init__(self, address: tuple[str, int], every: float = 0.1) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.connected = time.monotonic()
        self.every = every
        self.closed_by_server: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            while not self._stop.wait(self.every):
                self.sock.sendall(b"a")
        except OSError:  # the server closed: a reset on the next byte
            self.closed_by_server = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def status_of(address: tuple[str, int]) -> int:
    """The status of one whole GET /healthz."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        head = sock.recv(64)
    return int(head.split()[1]) if head.startswith(b"HTTP/") else 0


def first_200_after(address: tuple[str, int], since: float, limit: float) -> float:
    """Seconds from ``since`` until a request is answered 200 (polling every 50 ms)."""
    while time.monotonic() - since < limit:
        if status_of(address) == 200:
            return time.monotonic() - since
        time.sleep(0.05)
    pytest.fail(f"no slot free within {limit} s")


def _slots_come_back_within_the_deadline(read_timeout: float) -> None:
    with listening(read_timeout) as address:
        dribblers = [Dribbler(address) for _ in range(2)]
        try:
            time.sleep(0.2)
            assert status_of(address) == 503  # both slots held by the dribblers
            freed = first_200_after(address, dribblers[0].connected, read_timeout + 3)
        finally:
            for dribbler in dribblers:
                dribbler.stop()
    assert freed <= read_timeout + MARGIN_S, f"slot free {freed:.2f} s after accept"


def test_a_slot_held_by_a_dribbling_client_is_free_within_the_read_timeout() -> None:
    """Two clients dribbling header bytes hold both slots; the next request is served within
    read_timeout (1 s) of their connection, plus a scheduling margin."""
    _slots_come_back_within_the_deadline(1.0)


def test_a_client_reopening_just_after_the_deadline_cannot_keep_the_listener_busy() -> None:
    """A client that reopens its stalled connections as soon as they are closed leaves a window
    at each deadline: the listener is not at 503 forever."""
    read_timeout = 0.6
    with listening(read_timeout, max_connections=1) as address:
        served = 0
        began = time.monotonic()
        while time.monotonic() - began < 4 * read_timeout and not served:
            dribbler = Dribbler(address)
            time.sleep(read_timeout + MARGIN_S)
            served += status_of(address) == 200
            dribbler.stop()
    assert served


def test_the_stalled_client_is_answered_408_or_cut_off_at_the_deadline() -> None:
    """The dribbler learns it was cut off (a 408, or a reset on its next byte) right after the
    deadline, not LINGER_S later."""
    read_timeout = 0.8
    with listening(read_timeout) as address:
        dribbler = Dribbler(address)
        try:
            dribbler.sock.settimeout(read_timeout + 3)
            with contextlib.suppress(OSError):
                reply = dribbler.sock.recv(64)
                assert reply == b"" or reply.startswith(b"HTTP/1.0 408"), reply
            answered = time.monotonic() - dribbler.connected
        finally:
            dribbler.stop()
    assert read_timeout - 0.05 <= answered <= read_timeout + MARGIN_S


@pytest.mark.slow
def test_the_documented_10_s_deadline_frees_the_slot_within_10_s() -> None:
    """With the shipped default (README: 10 s to receive the request), the slot is free again
    10 s after the stalled clients connected, not 12 to 15 s."""
    assert READ_TIMEOUT_S == 10.0
    _slots_come_back_within_the_deadline(READ_TIMEOUT_S)
