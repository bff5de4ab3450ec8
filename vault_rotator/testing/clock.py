"""A manual clock for tests: ``sleep`` advances time instead of waiting.

Share one :class:`FakeClock` between the engine and the in-process emulator, and hours of
schedule run in milliseconds. Callbacks registered with :meth:`on_sleep` run on every sleep
(a test's consumers make their calls there), in registration order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class FakeClock:
    """Epoch seconds that move only when told to (thread-safe)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._on_sleep: list[Callable[[], None]] = []
        self.slept = 0.0

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` and run the sleep callbacks."""
        self.advance(max(0.0, seconds))
        self.slept += max(0.0, seconds)
        for callback in list(self._on_sleep):
            callback()

    def on_sleep(self, callback: Callable[[], None]) -> None:
        self._on_sleep.append(callback)
