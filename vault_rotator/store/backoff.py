"""Backing off when Vault answers 429: bounded, jittered, honouring ``Retry-After``.

OpenBao and Vault answer HTTP 429 when a rate-limit quota (``sys/quotas/rate-limit/<name>``)
is exceeded. The quota is checked before the request is handled, so nothing was done: any call
may be sent again, a check-and-set write included. Every call the adapter makes (the lean
transport's KV calls, :mod:`.transport`; hvac's logins, token lookups, renewals and capability
checks, :mod:`.vault`) goes through :meth:`Backoff.send`:

* each 429 is followed by a wait, then the same call: the wait doubles from
  :data:`FIRST_WAIT_S` up to :data:`MAX_WAIT_S`, jittered (half of it random, so that many
  workers told no at once do not come back at once), and is never shorter than the answer's
  ``Retry-After`` (seconds, or an HTTP date; Vault sends ``0`` when the quota's interval ends
  within the second);
* the call gives up, returning its last 429 (the adapter turns it into a one-line
  :class:`~vault_rotator.errors.StoreUnavailableError` naming the operation, the path and
  "rate limited (429)": transient, so the daemon tries again on its next poll), when the next
  wait would take it past :data:`DEADLINE_S` since its first try (or after :data:`MAX_TRIES`
  tries), or when ``Retry-After`` asks for more than :data:`RETRY_AFTER_MAX_S` (a quota's
  ``block_interval``: not worth holding a worker and the key's lease for).

The first 429 in a while is logged at warning (at most once per :data:`WARN_EVERY_S`), every
wait at debug. ``sleep``, the clocks and the jitter are injected (tests do not wait).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TypeVar

import structlog

A = TypeVar("A")
log = structlog.get_logger(__name__)

RATE_LIMITED = 429
FIRST_WAIT_S = 0.1  # the first wait (jittered: between half of it and all of it)
MAX_WAIT_S = 2.0  # one wait at most (unless Retry-After asks for more, up to the next)
RETRY_AFTER_MAX_S = 5.0  # a longer Retry-After is not waited for: the call gives up at once
DEADLINE_S = 8.0  # one call waits at most this long in all (inside a 30 s lease, with room)
MAX_TRIES = 12  # and is sent at most this many times
WARN_EVERY_S = 60.0
_SECONDS = re.compile(r"[0-9]{1,9}")


@dataclass
class Backoff:
    """How one process backs off a Vault that answers 429 (see the module docstring)."""

    first_s: float = FIRST_WAIT_S
    max_s: float = MAX_WAIT_S
    retry_after_max_s: float = RETRY_AFTER_MAX_S
    deadline_s: float = DEADLINE_S
    max_tries: int = MAX_TRIES
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic  # measures the deadline
    wall: Callable[[], float] = time.time  # reads a Retry-After given as a date
    jitter: Callable[[], float] = random.random  # in [0, 1)
    _warned_at: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(
        self,
        call: Callable[[], A],
        status_of: Callable[[A], int],
        retry_after_of: Callable[[A], str | None],
        *,
        what: str,
    ) -> A:
        """``call()`` again after each 429 until another answer, or until giving up (the last
        429 is returned: the caller treats it as it treats any 429). ``what`` names the call
        in logs (method and path, never a token or a value)."""
        started = self.clock()
        attempt = 0
        while True:
            answer = call()
            if status_of(answer) != RATE_LIMITED:
                return answer
            wait = self.wait(attempt, retry_after_of(answer), self.clock() - started)
            self._warn(what)
            if wait is None:
                log.debug("vault rate limited (429); giving up", call=what, tries=attempt + 1)
                return answer
            log.debug("vault rate limited (429); backing off", call=what, wait_s=round(wait, 3))
            self.sleep(wait)
            attempt += 1

    def wait(self, attempt: int, retry_after: str | None, elapsed: float) -> float | None:
        """The wait before try ``attempt + 2``, or None to give up."""
        if attempt + 1 >= self.max_tries:
            return None
        asked = retry_after_seconds(retry_after, self.wall())
        if asked is not None and asked > self.retry_after_max_s:
            return None
        step = min(self.max_s, self.first_s * 2.0**attempt)
        wait = max(step / 2 + self.jitter() * step / 2, asked or 0.0)
        if elapsed + wait > self.deadline_s:
            return None
        return wait

    def _warn(self, what: str) -> None:
        now = self.clock()
        with self._lock:
            if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
                return
            self._warned_at = now
        log.warning(
            "Vault is rate limiting us (429): backing off",
            call=what,
            deadline_s=self.deadline_s,
            note=f"said at most once per {WARN_EVERY_S:.0f}s",
        )


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (delta-seconds or an HTTP date);
    None when absent or unreadable."""
    text = (value or "").strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(moment.timestamp()) - now)
