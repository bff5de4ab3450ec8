"""Is a key due for rotation? Pure functions over its policy, a few state values and ``now``.

Everything is epoch seconds (UTC); nothing here reads a clock or does I/O.

The last rotation is the state record's ``last_success_at``, else the consumer secret's
``rotated_at``; never a Vault version's ``created_time`` (any write makes one). A key with
neither has never been rotated and is due at once (``first-run``).

From the last rotation:

* **slot**: the schedule's first due time strictly after it: the next cron firing
  (:func:`~vault_rotator.policy.next_fire`, crontab(5) semantics), or last + interval for
  ``every 30d``. Firings missed while the daemon was down all collapse into this one slot:
  once it rotates, the next slot lies after the rotation, so a restart rotates once, not once
  per missed firing. A cron is searched only up to ``last + max_age``;
  one with no firing by then (or ever: ``0 0 31 2 *``, which a policy file refuses but a stored
  policy may hold) has no slot, and max_age alone makes the key due.
* **jitter**: a deterministic offset in ``[0, jitter)`` from a hash of ``env/name`` and the
  slot, so it survives restarts and spreads keys sharing a schedule.
* **max_age**: the rotation is due at ``last + max_age`` at the latest, jitter or not.
* **window**: a preference. Due inside the window: due. Due outside it: wait for the window to
  open, unless it opens only after ``last + max_age``; then rotate now.

Reasons (the ``reason`` of :class:`Due`): due ``first-run``, ``schedule``, ``max_age``; not due
``not-yet``, ``window-wait``, ``frozen`` (new rotations stopped), ``in-flight`` (a rotation is
already running; the daemon drives it, it does not start another).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vault_rotator.policy import (
    KeyPolicy,
    Schedule,
    Window,
    next_fire,
    parse_schedule,
    parse_window,
)

FIRST_RUN = "first-run"
SCHEDULE = "schedule"
MAX_AGE = "max_age"
NOT_YET = "not-yet"
WINDOW_WAIT = "window-wait"
FROZEN = "frozen"
IN_FLIGHT = "in-flight"

_JITTER_DOMAIN = b"vault-rotator/jitter/v1\x00"


@dataclass(frozen=True, slots=True)
class Due:
    """Whether a key is due now, when (it became or will become) due, and why.

    ``at`` is the moment the key became due when ``due`` is true, and the moment it will be
    due otherwise (for ``frozen`` and ``in-flight``: when it would be due without them).
    """

    due: bool
    at: float
    reason: str


def last_rotation(last_success_at: float | None, rotated_at: str | None) -> float | None:
    """The last rotation: the record's last success, else the secret's ``rotated_at``.

    A ``rotated_at`` that is not an ISO 8601 time counts as absent; one without a zone is UTC.
    """
    if last_success_at is not None:
        return last_success_at
    if not rotated_at:
        return None
    try:
        stamp = datetime.fromisoformat(rotated_at)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def jitter_offset(ref: str, slot: float, jitter_s: float) -> float:
    """A stable offset in ``[0, jitter_s)`` for key ``ref`` (``env/name``) and a due slot."""
    if jitter_s <= 0:
        return 0.0
    message = f"{ref}\x00{round(slot)}".encode()
    digest = hashlib.sha256(_JITTER_DOMAIN + message).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64
    return fraction * jitter_s


def next_slot(schedule: Schedule, last: float, until: float | None = None) -> float | None:
    """The schedule's first due time strictly after ``last``.

    None when a cron does not fire by ``until`` (or never, without ``until``).
    """
    if schedule.interval_s is not None:
        return last + schedule.interval_s
    assert schedule.cron is not None
    return _next_fire(schedule.cron, last, until)


@functools.lru_cache(maxsize=32_768)
def _next_fire(cron: str, last: float, until: float | None) -> float | None:
    """The cron's first firing strictly after ``last`` (cached: ``last`` rarely changes; room
    for every key of a large daemon, whose status and schedule ask for each key at every
    poll: a cache smaller than the key count misses every time, at ~100 us a firing)."""
    after = datetime.fromtimestamp(last, UTC) + timedelta(microseconds=1)
    end = None if until is None else datetime.fromtimestamp(until, UTC)
    fire = next_fire(cron, after, end)
    return None if fire is None else fire.timestamp()


@functools.lru_cache(maxsize=256)
def _schedule(text: str) -> Schedule:
    """The parsed schedule (cached: the daemon asks for every key on every pass)."""
    return parse_schedule(text)


@functools.lru_cache(maxsize=256)
def _window(text: str | None) -> Window | None:
    return None if text is None else parse_window(text)


def due(
    policy: KeyPolicy,
    *,
    last_success_at: float | None,
    rotated_at: str | None,
    in_flight: bool,
    frozen: bool,
    now: float,
) -> Due:
    """Whether ``policy``'s key should start a rotation at ``now``, and why."""
    plan = _plan(policy, last_rotation(last_success_at, rotated_at), now)
    if in_flight:
        return Due(due=False, at=plan.at, reason=IN_FLIGHT)
    if frozen:
        return Due(due=False, at=plan.at, reason=FROZEN)
    return plan


def next_due(
    policy: KeyPolicy, *, last_success_at: float | None, rotated_at: str | None, now: float
) -> float:
    """When the key is (or became) due, ignoring freezes and rotations in flight."""
    return _plan(policy, last_rotation(last_success_at, rotated_at), now).at


def _plan(policy: KeyPolicy, last: float | None, now: float) -> Due:
    if last is None:
        return Due(due=True, at=now, reason=FIRST_RUN)
    deadline = last + policy.max_age_s
    slot = next_slot(_schedule(policy.schedule), last, until=deadline)
    target, reason = deadline, MAX_AGE  # no slot before the deadline: max_age decides
    if slot is not None:
        target, reason = slot + jitter_offset(policy.ref, slot, policy.jitter_s), SCHEDULE
    if target >= deadline:
        target, reason = deadline, MAX_AGE
    window = _window(policy.window)
    if window is None or reason == MAX_AGE:
        return Due(due=now >= target, at=target, reason=reason if now >= target else NOT_YET)
    return _in_window(window, target, deadline, now)


def _in_window(window: Window, target: float, deadline: float, now: float) -> Due:
    """Apply a window to a schedule target earlier than the max_age deadline."""
    if now < target:
        opens = _opens(window, target)
        return Due(due=False, at=opens if opens <= deadline else target, reason=NOT_YET)
    opens = _opens(window, now)
    if opens <= now:
        return Due(due=True, at=target, reason=SCHEDULE)
    if opens > deadline:
        return Due(due=True, at=target, reason=MAX_AGE)
    return Due(due=False, at=opens, reason=WINDOW_WAIT)


def _opens(window: Window, moment: float) -> float:
    """``moment`` if inside the window, else when the window next opens."""
    return window.next_open(datetime.fromtimestamp(moment, UTC)).timestamp()
