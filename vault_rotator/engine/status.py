"""A key's status, derived purely from its policy, state record, secret and the clock.

"Stalled" is derived from the deadlines saved in the record, so ``status`` shows it even when no
process is running: a deadline passed more than :func:`judging_grace` ago (the time a running
daemon needs to judge it: three polls, at least a minute) reads ``stalled:<reason>``. Sooner, the
rotation keeps its step and the deadline is only listed as passed: a daemon restarting after a
crash finds pickup evidence and goes on, and must not be reported stalled meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vault_rotator.engine import reasons
from vault_rotator.engine.state import StateRecord

MIN_GRACE_S = 60.0


def judging_grace(policy: Mapping[str, Any]) -> float:
    """How long after a deadline a running daemon has judged it: 3 polls, at least a minute."""
    provider = policy.get("provider")
    poll = provider.get("poll_interval_s") if isinstance(provider, Mapping) else None
    poll = float(poll) if isinstance(poll, int | float) and not isinstance(poll, bool) else 30.0
    return max(MIN_GRACE_S, 3 * poll)


def derive_state(record: StateRecord, now: float) -> tuple[str, list[str]]:
    """(state word, deadlines passed) for a record at ``now``."""
    rot = record.rotation
    if rot is None:
        return ("idle" if record.outcomes or record.current_key_id else "never-rotated"), []
    passed: list[str] = []
    overdue: list[str] = []  # passed longer ago than a daemon needs to judge them
    grace = judging_grace(rot.policy)

    def check(reason: str, deadline: float) -> None:
        if now >= deadline:
            passed.append(reason)
            if now >= deadline + grace:
                overdue.append(reason)

    if record.phase == reasons.PUBLISHED:
        if rot.pickup_at is None and rot.pickup_deadline is not None:
            check(reasons.PICKUP_TIMEOUT, rot.pickup_deadline)
        drain_open = rot.old_key_id is not None and not rot.old_deleted
        drain_open = drain_open and rot.old_disabled_at is None  # committed to deleting
        if drain_open and rot.drain_deadline is not None:
            check(reasons.DRAIN_TIMEOUT, rot.drain_deadline)
    aborting = record.phase == reasons.ABORTING and not rot.new_deleted
    if aborting and rot.abort_deadline is not None:
        check(reasons.DRAIN_TIMEOUT, rot.abort_deadline)
    if rot.stalled is not None:
        return f"stalled:{rot.stalled.reason}", passed
    if overdue:
        return f"stalled:{overdue[0]}", passed
    words = {
        reasons.INTENT: "creating",
        reasons.ABORTING: "aborting",
        reasons.CLEANUP: "failing:cleanup",
        reasons.PUBLISHED: "draining" if rot.pickup_at is not None else "awaiting-pickup",
    }
    return words.get(record.phase, record.phase), passed


def last_rotated(record: StateRecord, secret: Mapping[str, Any] | None) -> float | None:
    """When the key was last rotated: the record's last success, else the secret's stamp."""
    if record.last_success_at is not None:
        return record.last_success_at
    stamp = (secret or {}).get("rotated_at")
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            return None
    return None


def key_status(
    *,
    ref: str,
    max_age_s: float | None,
    next_due_at: float | None = None,
    record: StateRecord,
    secret: Mapping[str, Any] | None,
    now: float,
    acks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One key's status as a JSON-safe dict (the ``status --json`` row)."""
    state, passed = derive_state(record, now)
    last = last_rotated(record, secret)
    rot = record.rotation
    return {
        "key": ref,
        "state": state,
        "current_key_id": record.current_key_id or (secret or {}).get("key_id"),
        "age_s": None if last is None else round(now - last, 3),
        "next_due_at": next_due_at,
        "in_policy": max_age_s is not None,
        "rotation_id": rot.id if rot else None,
        "new_key_id": rot.new_key_id if rot else None,
        "old_key_id": rot.old_key_id if rot else None,
        "stall_detail": rot.stalled.detail if rot and rot.stalled else None,
        "mode": rot.mode if rot else None,
        "deadlines_passed": passed,
        "lease_holder": lease_holder(record, now),
        "last_outcomes": [
            {
                "rotation_id": o.rotation_id,
                "outcome": o.outcome,
                "at": o.at,
                "trigger": o.trigger,
                "by": o.by,
                "old_key_id": o.old_key_id,
                "new_key_id": o.new_key_id,
                "detail": o.detail,
            }
            for o in record.outcomes[-5:]
        ],
        "acks": acks,  # engine/ack_status.py; None: not read
    }


def steady_until(record: StateRecord, now: float) -> float:
    """Until when :func:`derive_state` and :func:`lease_holder` give what they give at
    ``now`` (the next deadline, deadline past its judging grace or lease expiry after it)."""
    moments = []
    rot = record.rotation
    if rot is not None:
        grace = judging_grace(rot.policy)
        for deadline in (rot.pickup_deadline, rot.drain_deadline, rot.abort_deadline):
            if deadline is not None:
                moments += [deadline, deadline + grace]
    if record.lease is not None:
        moments.append(record.lease.expires_at)
    return min((m for m in moments if m > now), default=math.inf)


def lease_holder(record: StateRecord, now: float) -> str | None:
    """Who holds the key's lease at ``now`` (a handed-off lease ended with its pending save)."""
    lease = record.lease
    if lease and lease.expires_at > now and lease.pending_attempt is None:
        return lease.holder
    return None


UNREADABLE = "unreadable"


def unreadable_row(ref: str, error: str) -> dict[str, Any]:
    """The row of a key whose state record cannot be read (malformed, a newer schema): the
    error in its detail, every other field empty, so every other key still shows."""
    return {
        "key": ref,
        "state": UNREADABLE,
        "current_key_id": None,
        "age_s": None,
        "next_due_at": None,
        "in_policy": True,
        "rotation_id": None,
        "new_key_id": None,
        "old_key_id": None,
        "stall_detail": error,
        "mode": None,
        "deadlines_passed": [],
        "lease_holder": None,
        "last_outcomes": [],
        "acks": None,
    }
