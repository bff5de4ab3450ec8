"""Which idle keys start a rotation on this poll: pure, over the book's entries and the clock.

A key is looked at only once its ``check_at`` has come (when it falls due, as :mod:`.due` says;
right away after its record changed), so a poll where nothing falls due looks at no key. A due
key starts unless frozen (looked at again a minute later), failing with a backoff
(:func:`schedule_basis`), or beyond ``max_concurrent`` (then on a later poll, earliest due first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vault_rotator.daemon.book import Entry
from vault_rotator.daemon.due import due
from vault_rotator.engine import reasons
from vault_rotator.engine.state import StateRecord

FAILURE_BACKOFF_S = 3600.0
MAX_FAILURE_BACKOFF_S = 86400.0
FROZEN_RECHECK_S = 60.0


def schedule_basis(record: StateRecord) -> tuple[float | None, float]:
    """(the "last rotation" the schedule counts from, the earliest time to start again).

    An operator's abort counts as a rotation for the schedule: the daemon does not undo it on
    its next tick, but waits for the next slot. A rotation that failed verification is retried
    with a backoff (1 h, doubling per failure in a row, at most a day), not on every poll.
    """
    last = record.last_success_at
    failures = 0
    for outcome in reversed(record.outcomes):
        if outcome.outcome != reasons.FAILED_VERIFY:
            break
        failures += 1
    latest = record.outcomes[-1] if record.outcomes else None
    if latest is not None and latest.outcome == reasons.ABORTED:
        last = max(last or 0.0, latest.at)
    if failures and latest is not None:
        wait = min(FAILURE_BACKOFF_S * 2 ** (failures - 1), MAX_FAILURE_BACKOFF_S)
        return last, latest.at + wait
    return last, 0.0


@dataclass(frozen=True, slots=True)
class Start:
    """A key to start now, and why (the trigger's ``by``: ``daemon:<reason>``)."""

    entry: Entry
    at: float  # when it fell due
    reason: str


def due_now(
    entries: Iterable[Entry], *, frozen: Callable[[Entry], bool], now: float
) -> tuple[list[Start], float]:
    """Idle keys due now, earliest first, and when the next other one is worth a look.

    Sets each looked-at entry's ``check_at``. ``frozen`` is asked only of keys that are due.
    """
    found: list[Start] = []
    next_check = float("inf")
    for entry in entries:
        if entry.in_policy and entry.record.rotation is None and entry.check_at <= now:
            entry.check_at = _look(entry, frozen, now, found)
        if entry.in_policy and entry.record.rotation is None:
            next_check = min(next_check, entry.check_at)
    found.sort(key=lambda start: start.at)
    return found, next_check


def _look(entry: Entry, frozen: Callable[[Entry], bool], now: float, found: list[Start]) -> float:
    """When to look at ``entry`` again; appends it to ``found`` if it starts now."""
    last, not_before = schedule_basis(entry.record)
    verdict = due(
        entry.policy,
        last_success_at=last,
        rotated_at=entry.rotated_at,
        in_flight=False,
        frozen=False,
        now=now,
    )
    if not verdict.due:
        return verdict.at
    if now < not_before:
        return not_before
    if frozen(entry):
        return now + FROZEN_RECHECK_S
    found.append(Start(entry, verdict.at, verdict.reason))
    return now  # started, or left for a later poll when max_concurrent is reached
