"""Keys that keep failing: counted per key, parked after a while, alerted once.

A pass that fails (Vault refuses a path, the provider rejects a create, a bug) is retried on the
next tick, and other keys go on regardless. A key whose passes have failed without a break for
:data:`PARK_AFTER_S` (and at least :data:`MIN_FAILURES` times) is *parked*: the daemon records a
``retries-exhausted`` stall on a rotation in flight (both keys stay alive; ``resume`` clears it)
and alerts once. A key with nothing in flight (its start keeps failing) cannot be stalled: it is
retried after a growing wait (``poll_interval`` doubling per failure past parking, at most
:data:`MAX_BACKOFF_S`), with one alert per episode. One successful pass ends the episode.

The book lives in memory: a restarted daemon starts counting again, which costs a few retries,
never a key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

PARK_AFTER_S = 900.0  # 15 minutes of failing without a break
MIN_FAILURES = 3
MAX_BACKOFF_S = 3600.0


@dataclass
class Episode:
    """One run of failures of one key, from its first failure to its next success."""

    first_at: float
    count: int = 0
    retry_at: float = 0.0
    alerted: bool = False
    last_error: str = ""


class FailureBook:
    """Consecutive failed passes per key (``ENV/NAME``), on an injectable clock (thread-safe:
    the daemon's passes run on worker threads)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._episodes: dict[str, Episode] = {}
        self._lock = threading.Lock()

    def succeeded(self, ref: str) -> None:
        if ref in self._episodes:
            with self._lock:
                self._episodes.pop(ref, None)

    def failed(self, ref: str, error: str, poll_interval: float) -> Episode:
        """Count a failed pass; once parked, push the next try out (doubling, capped)."""
        with self._lock:
            return self._failed(ref, error, poll_interval)

    def _failed(self, ref: str, error: str, poll_interval: float) -> Episode:
        now = self._clock()
        episode = self._episodes.setdefault(ref, Episode(first_at=now))
        episode.count += 1
        episode.last_error = error
        if self.is_parked(episode):
            past = episode.count - MIN_FAILURES
            episode.retry_at = now + min(poll_interval * 2 ** min(past, 20), MAX_BACKOFF_S)
        return episode

    def is_parked(self, episode: Episode) -> bool:
        failing_for = self._clock() - episode.first_at
        return episode.count >= MIN_FAILURES and failing_for >= PARK_AFTER_S

    def waiting(self, ref: str) -> bool:
        """True while a parked key's next try is not due yet."""
        episode = self._episodes.get(ref)
        return episode is not None and self._clock() < episode.retry_at

    def alert_now(self, episode: Episode) -> bool:
        """True once per episode, at once (a failure no retry can mend)."""
        with self._lock:
            if episode.alerted:
                return False
            episode.alerted = True
            return True

    def first_alert(self, episode: Episode) -> bool:
        """True once per episode, when it is parked: the moment to alert."""
        with self._lock:
            if episode.alerted or not self.is_parked(episode):
                return False
            episode.alerted = True
            return True
