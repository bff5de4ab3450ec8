"""Pure decisions: evidence rules for pickup and quiet, and the daemon's restart rules."""

from __future__ import annotations

from datetime import UTC, datetime

from vault_rotator.daemon.daemon import FAILURE_BACKOFF_S, schedule_basis
from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Observation, Timing, decide_published, use_advanced
from vault_rotator.engine.state import Outcome, Rotation, StateRecord, UseMark
from vault_rotator.ports.provider import KeyRecord, Permissions

T0 = 1_800_000_000.0
TIMING = Timing(usage_lag=60, pickup_timeout=3600, drain_period=600, drain_timeout=7200)


def stamp(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def rotation(**changes: object) -> Rotation:
    return Rotation(
        id="r1",
        attempt=1,
        date="2027-01-15",
        policy={},
        permissions=Permissions(allowed_providers=("openai",)),
        started_at=T0,
        start_version=1,
        old_key_id="old",
        new_key_id="new",
        published_at=T0,
        pickup_deadline=T0 + 3600,
        baseline=UseMark(stamp(0).isoformat()),
    ).evolve(**changes)


def test_a_later_stamp_or_more_usage_is_use_and_an_equal_one_is_not() -> None:
    """Coarse stamps: the same rounded minute is no evidence; usage rises count in dialect A."""
    base = UseMark(stamp(0).isoformat(), 1.0, 10)
    assert not use_advanced(base, UseMark(stamp(0).isoformat(), 1.0, 10))
    assert use_advanced(base, UseMark(stamp(60).isoformat(), 1.0, 10))
    assert use_advanced(UseMark(None, 1.0, None), UseMark(None, 1.5, None))
    assert not use_advanced(UseMark(None, 1.0, None), UseMark(None, 1.0, None))


def test_an_old_key_missing_from_the_deciding_pass_is_not_quiet() -> None:
    """Quiet for long enough, but absent from this list pass: wait, never delete on no evidence."""
    rot = rotation(
        pickup_at=T0 + 60, drain_deadline=T0 + 7200, old_mark=UseMark("x"), old_mark_since=T0
    )
    new = KeyRecord(id="new", name="n", last_used_at=stamp(120))
    absent = Observation.of([new], T0 + 3000)
    assert decide_published(rot, absent, TIMING, frozenset(), now=T0 + 3000).action == "wait"
    old = KeyRecord(id="old", name="o", last_used_at=None)
    seen = Observation.of([new, old], T0 + 3000)
    decision = decide_published(
        rot.evolve(old_mark=UseMark()), seen, TIMING, frozenset(), now=T0 + 3000
    )
    assert decision.action == "delete-old"


def test_emergency_deletes_on_pickup_without_drain() -> None:
    """In emergency mode the first sign of use of the new key is enough."""
    rot = rotation(mode=reasons.EMERGENCY)
    obs = Observation.of(
        [KeyRecord(id="new", name="n", last_used_at=stamp(90)), KeyRecord(id="old", name="o")],
        T0 + 100,
    )
    assert decide_published(rot, obs, TIMING, frozenset(), now=T0 + 100).action == "delete-old"


def record_with(*names: str) -> StateRecord:
    outcomes = tuple(Outcome(f"r{i}", n, T0 + i * 100) for i, n in enumerate(names))
    return StateRecord.new("e", "k").evolve(outcomes=outcomes, last_success_at=T0 - 86400)


def test_an_abort_counts_as_a_rotation_for_the_schedule() -> None:
    """After an operator's abort the schedule counts from the abort, not the last success."""
    last, not_before = schedule_basis(record_with(reasons.SUCCEEDED, reasons.ABORTED))
    assert last == T0 + 100
    assert not_before == 0.0


def test_failed_verifications_back_off_and_double() -> None:
    """Failures in a row hold new rotations back 1 h, then 2 h, from the latest failure."""
    _, once = schedule_basis(record_with(reasons.FAILED_VERIFY))
    assert once == T0 + FAILURE_BACKOFF_S
    _, twice = schedule_basis(record_with(reasons.FAILED_VERIFY, reasons.FAILED_VERIFY))
    assert twice == T0 + 100 + 2 * FAILURE_BACKOFF_S
    assert schedule_basis(record_with(reasons.FAILED_VERIFY, reasons.SUCCEEDED))[1] == 0.0
