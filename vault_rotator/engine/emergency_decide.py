"""What one key of an environment-wide emergency needs next: pure, from its state record.

A round (:mod:`.emergency_round`) reads each key's state record and asks :func:`decide_key`:
start a rotation (emergency mode), upgrade the rotation in flight to emergency, drive it, or
nothing; then :func:`after_pass` turns the pass's progress into the key's new entry.

Which rotation of a key belongs to the request (so a rerun never rotates a key twice): the one
whose id the request recorded; before an id is recorded (a crash right after the start), one
whose trigger is the request's tag ``emergency:<id>``, or any emergency rotation that
succeeded at or after the key's ``since``. A normal rotation that merely ended after the request
is not taken: the key it serves may have been published before the leak. A rotation already in
flight is the request's once upgraded, unless it was already past the point where it could
replace the leaked key: its new key was published before the key's ``since`` (that key may
have leaked too), or it was aborting (an abort before the request, or one in ``aborting`` or
``failing:cleanup`` when the request first sees it, serves the old, leaked key again). Such a
rotation is recorded as the entry's ``prior``: it is upgraded (a published one) or left to
finish, and once it ends the request starts a fresh emergency rotation of the key. Only an abort
of the request's own rotation ends the key as ``ended``.

Where a key ends: a success outcome is ``done``; an operator's abort or finish ``ended``
(final); a start refused or a failed verification ``failed`` (rounds leave it; a rerun tries
again); a stall ``stalled`` (both keys alive: the operator resumes, aborts or finishes it, and
the request records how it ended).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from vault_rotator.engine import reasons
from vault_rotator.engine.context import Progress
from vault_rotator.engine.emergency import TERMINAL, EmergencyRequest, KeyEntry, Step
from vault_rotator.engine.outcomes import classify
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.state import Outcome, StateRecord

EMERGENCY_SUCCESSES = frozenset({reasons.SUCCEEDED_EMERGENCY, reasons.SUCCEEDED_REVOKED})
_PHASE_STEP = {
    Phase.INTENT: Step.CREATING,
    Phase.PUBLISHED: Step.AWAITING_PICKUP,
    Phase.ABORTING: Step.ABORTING,
    Phase.CLEANUP: Step.CLEANING_UP,
}


class KeyAction(enum.StrEnum):
    """What a round does for one key."""

    NONE = "none"  # nothing (settled, or in flight and driven by someone else)
    START = "start"  # rotate --emergency: start a rotation
    UPGRADE = "upgrade"  # rotate --emergency on a rotation in flight (upgrade, then a pass)
    DRIVE = "drive"  # one pass of the request's emergency rotation


def ours(request: EmergencyRequest, entry: KeyEntry, outcome: Outcome) -> bool:
    """Whether a finished rotation was this request's (see the module docstring)."""
    if entry.rotation_id is not None:
        return outcome.rotation_id == entry.rotation_id
    if outcome.rotation_id == entry.prior:
        return False
    if outcome.trigger == request.tag:  # the request's own, whatever the clocks say; a
        # rerun's requeued key (a later since) does not take its earlier failed rotation
        return entry.since <= request.requested_at or outcome.at >= entry.since
    if outcome.at < entry.since:
        return False
    return outcome.outcome in EMERGENCY_SUCCESSES


def prior(request: EmergencyRequest, entry: KeyEntry, record: StateRecord) -> bool:
    """Whether the rotation in flight began before the request and can no longer replace
    the leaked key for it (see the module docstring)."""
    rot = record.rotation
    assert rot is not None
    if rot.id == entry.prior:
        return True
    if rot.id == entry.rotation_id or rot.trigger == request.tag:
        return False
    published_before = rot.published_at is not None and rot.published_at < entry.since
    aborted_before = rot.aborted_at is not None and rot.aborted_at < entry.since
    aborting = record.phase in (Phase.ABORTING, Phase.CLEANUP)
    return published_before or aborted_before or aborting


def ended(entry: KeyEntry, outcome: Outcome, now: float) -> KeyEntry:
    """The entry of a key whose request rotation finished with ``outcome``."""
    kind = classify(outcome.outcome)
    if kind.success:
        step = Step.DONE
    elif kind.exit_code != 0:  # failed verification (or an outcome unknown to this version)
        step = Step.FAILED
    else:
        step = Step.ENDED
    detail = outcome.detail if step != Step.DONE else ""
    return entry.moved(
        step, now, rotation_id=outcome.rotation_id, outcome=outcome.outcome, detail=detail
    )


def in_flight_step(record: StateRecord) -> Step:
    """The step of a record with a rotation in flight."""
    rot = record.rotation
    assert rot is not None
    if rot.stalled is not None:
        return Step.STALLED
    if record.phase == Phase.PUBLISHED and rot.pickup_at is not None:
        return Step.DRAINING
    return _PHASE_STEP.get(record.phase, Step.CREATING)


def decide_key(
    request: EmergencyRequest, entry: KeyEntry, record: StateRecord, now: float
) -> tuple[KeyAction, KeyEntry]:
    """What a key of the request needs next, from its state record (the entry as it stands)."""
    if record.rotation is not None:
        if prior(request, entry, record):
            return _prior_in_flight(request, entry, record, now)
        return _in_flight(request, entry, record, now)
    for outcome in reversed(record.outcomes):
        if ours(request, entry, outcome):
            return KeyAction.NONE, ended(entry, outcome, now)
    if entry.step == Step.FAILED:
        return KeyAction.NONE, entry  # tried again by a rerun only (resumed), not every round
    if entry.rotation_id is not None:
        why = f"rotation {entry.rotation_id} ended with no outcome in the state record"
        return KeyAction.NONE, entry.moved(Step.FAILED, now, detail=why)
    return KeyAction.START, entry.moved(Step.QUEUED, now, detail="")


def _in_flight(
    request: EmergencyRequest, entry: KeyEntry, record: StateRecord, now: float
) -> tuple[KeyAction, KeyEntry]:
    """The request's rotation in flight: upgraded, driven, or (stalled) left to an operator."""
    rot = record.rotation
    assert rot is not None
    upgraded = rot.mode == reasons.EMERGENCY and rot.revoke_old_now >= request.revoke_old_now
    detail = f"{rot.stalled.reason}: {rot.stalled.detail}" if rot.stalled else ""
    moved = entry.moved(in_flight_step(record), now, rotation_id=rot.id, detail=detail)
    if not upgraded:
        return KeyAction.UPGRADE, moved
    return (KeyAction.NONE if rot.stalled else KeyAction.DRIVE), moved


def _prior_in_flight(
    request: EmergencyRequest, entry: KeyEntry, record: StateRecord, now: float
) -> tuple[KeyAction, KeyEntry]:
    """A rotation from before the request: upgraded if published (its old key revoked at
    once), driven to its end if aborting; the request's own rotation comes after it."""
    rot = record.rotation
    assert rot is not None
    detail = f"{rot.stalled.reason}: {rot.stalled.detail}" if rot.stalled else ""
    moved = entry.moved(in_flight_step(record), now, rotation_id=None, prior=rot.id, detail=detail)
    if rot.stalled is not None:
        return KeyAction.NONE, moved
    aborting = record.phase in (Phase.ABORTING, Phase.CLEANUP) or rot.aborted_at is not None
    upgraded = rot.mode == reasons.EMERGENCY and rot.revoke_old_now >= request.revoke_old_now
    if aborting or upgraded:
        return KeyAction.DRIVE, moved
    return KeyAction.UPGRADE, moved


def after_pass(entry: KeyEntry, progress: Progress, now: float) -> KeyEntry:
    """The entry once a pass of the key's rotation returned ``progress``."""
    if entry.prior is not None and entry.rotation_id is None:
        ended_id = progress.outcome.rotation_id if progress.outcome else progress.rotation_id
        if ended_id == entry.prior:  # the earlier rotation: the request's own comes next
            if progress.outcome is not None:
                return entry.moved(Step.QUEUED, now, detail="")
            step = _PHASE_STEP.get(Phase(progress.phase), Step.CREATING)
            return entry.moved(step, now, detail="")
    if progress.outcome is not None:
        return ended(entry, progress.outcome, now)
    if progress.rotation_id is None:
        return entry
    if progress.stalled is not None:
        detail = f"{progress.stalled.reason}: {progress.stalled.detail}"
        return entry.moved(Step.STALLED, now, rotation_id=progress.rotation_id, detail=detail)
    step = _PHASE_STEP.get(Phase(progress.phase), Step.CREATING)
    return entry.moved(step, now, rotation_id=progress.rotation_id, detail="")


def merged(
    stored: EmergencyRequest, changes: Mapping[str, KeyEntry], now: float
) -> EmergencyRequest:
    """``changes`` laid over a request another writer saved meanwhile: a key it saw end stays
    ended (an end is final), every other change is ours (we read the key after it did)."""
    kept = {
        name: entry
        for name, entry in changes.items()
        if name in stored.keys
        and not (stored.keys[name].step in TERMINAL and entry.step not in TERMINAL)
    }
    return stored.with_keys(kept, now)


def refreshed(
    request: EmergencyRequest, records: Mapping[str, StateRecord], now: float
) -> EmergencyRequest:
    """The request as its keys' records show it now (for a view; nothing is acted on)."""
    changes = {
        name: decide_key(request, request.keys[name], record, now)[1]
        for name, record in records.items()
        if name in request.keys
    }
    return request.with_keys(changes, now)
