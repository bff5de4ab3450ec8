"""How many requests one provider account gets at once, sized from its answers.

The daemon's workers share one client per account; a :class:`Limiter` bounds the requests in
flight through it. The bound adapts (additive increase, multiplicative decrease):

* it starts at ``start`` and grows by one after ``limit`` answers in a row that were not 429,
  up to ``ceiling``;
* a 429 halves it (never below one) and, when the answer says how long to wait
  (``Retry-After``, ``X-RateLimit-Reset``) and that is at most :data:`MAX_PAUSE_S`, pauses
  every new request until then. (A longer wait is the engine's to handle for the rotation that
  got it: it stalls as ``rate-limited``, nothing created; it does not hold the whole account.)

Nobody fails for it: a request waits for a slot (or for the pause to end) up to ``max_wait``,
which the client's per-attempt budget already covers (the attempt's deadline is three timeouts
and its budget four). Past that, it is not sent: the caller gets a retryable error that says
the request never reached the server (a create is then safe to retry), a
:class:`~vault_rotator.errors.RateLimitedError` without a delay during a pause, so the engine
comes back on a later pass (``retry-later``) instead of waiting inside a call or stalling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vault_rotator.errors import ProviderRetryableError, RateLimitedError

DEFAULT_START = 16
DEFAULT_CEILING = 64
MAX_PAUSE_S = 60.0  # a longer Retry-After pauses no one but the rotation that got it


class Limiter:
    """An adaptive bound on concurrent requests (thread-safe; see the module)."""

    def __init__(
        self,
        *,
        start: int = DEFAULT_START,
        ceiling: int = DEFAULT_CEILING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = max(1, min(start, self.ceiling))
        self.in_flight = 0
        self.paused_until = 0.0
        self.throttled = 0  # 429s seen
        self._ok_in_a_row = 0
        self._clock = clock
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, endpoint: str, max_wait: float) -> Iterator[Limiter]:
        """Hold one request slot for the ``with`` block (see the module for the waits)."""
        self._acquire(endpoint, max_wait)
        try:
            yield self
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()

    def _acquire(self, endpoint: str, max_wait: float) -> None:
        deadline = self._clock() + max_wait
        with self._cond:
            while True:
                now = self._clock()
                paused = self.paused_until - now
                if paused > 0 and self.paused_until > deadline:
                    raise RateLimitedError(
                        f"{endpoint}: not sent, the provider asked this account to wait "
                        f"{paused:.1f}s more (429 Retry-After); trying again later",
                        endpoint=endpoint,
                        reached_server=False,
                    )
                if paused <= 0 and self.in_flight < self.limit:
                    self.in_flight += 1
                    return
                if now >= deadline:
                    raise ProviderRetryableError(
                        f"{endpoint}: not sent, no request slot within {max_wait:g}s "
                        f"({self.in_flight} in flight, bound {self.limit})",
                        endpoint=endpoint,
                        reached_server=False,
                    )
                self._cond.wait(max(0.001, min(deadline - now, paused if paused > 0 else 1.0)))

    def answered(self, status: int, retry_after: float | None) -> None:
        """Learn from an answer: a 429 slows down, anything else counts toward speeding up."""
        with self._cond:
            if status != 429:
                self._ok_in_a_row += 1
                if self._ok_in_a_row >= self.limit and self.limit < self.ceiling:
                    self.limit += 1
                    self._ok_in_a_row = 0
                    self._cond.notify()
                return
            self.throttled += 1
            self._ok_in_a_row = 0
            self.limit = max(1, self.limit // 2)
            if retry_after is not None and 0 < retry_after <= MAX_PAUSE_S:
                self.paused_until = max(self.paused_until, self._clock() + retry_after)
