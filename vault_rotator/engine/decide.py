"""Pure decisions of a published rotation: is the new key in use, is the old one quiet, what next.

Everything here is a function of data gathered first (the state record, one list pass, the
local clock's "now"); nothing does I/O, so hours of schedule are tested in microseconds.

Evidence rules:

* Pickup: the new key's reported use went beyond the *baseline* taken ``usage_lag`` after the
  engine's own verify call: a strictly later ``last_used_at`` (dialects B, C), or a rise in
  lifetime usage cost or tokens (dialects A, B). Provider timestamps are compared only with
  provider timestamps.
* Quiet: the old key's reported use unchanged across observations spanning
  ``drain_period + usage_lag`` on the local clock. A key absent from a list pass was not
  observed: that is neither quiet nor gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from vault_rotator.engine import reasons
from vault_rotator.engine.state import Rotation, UseMark
from vault_rotator.ports.provider import KeyRecord


@dataclass(frozen=True, slots=True)
class Observation:
    """One list pass of an account: keys by id, and the local time the pass finished."""

    keys: Mapping[str, KeyRecord]
    at: float

    @classmethod
    def of(cls, keys: list[KeyRecord] | tuple[KeyRecord, ...], at: float) -> Observation:
        return cls({k.id: k for k in keys}, at)


@dataclass(frozen=True, slots=True)
class Timing:
    """The durations a published rotation is judged by (seconds)."""

    usage_lag: float
    pickup_timeout: float
    drain_period: float
    drain_timeout: float
    disable_before_delete: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do next, and the rotation's updated observations."""

    # "wait" | "disable-old" | "delete-old" | "sweep" | "finish" | "stall"
    # abort: "republish" | "delete-new"
    action: str
    rotation: Rotation
    reason: str = ""
    detail: str = ""
    sweep_ids: tuple[str, ...] = field(default_factory=tuple)


def mark_of(key: KeyRecord) -> UseMark:
    """The provider-reported use of a key."""
    stamp = key.last_used_at.isoformat() if key.last_used_at is not None else None
    return UseMark(stamp, key.usage_cost, key.usage_tokens)


def _later(now: str | None, base: str | None) -> bool:
    if now is None:
        return False
    if base is None:
        return True
    return datetime.fromisoformat(now) > datetime.fromisoformat(base)


def _rose(now: float | None, base: float | None) -> bool:
    if now is None:
        return False
    return now > (base or 0)


def use_advanced(baseline: UseMark, now: UseMark) -> bool:
    """True when ``now`` shows use beyond ``baseline``: a later stamp or more cost/tokens."""
    return (
        _later(now.last_used_at, baseline.last_used_at)
        or _rose(now.usage_cost, baseline.usage_cost)
        or _rose(now.usage_tokens, baseline.usage_tokens)
    )


def stray_keys(rotation: Rotation, obs: Observation, names: frozenset[str]) -> tuple[str, ...]:
    """Ids of keys this rotation created (by exact name) that are not the published one."""
    return tuple(
        sorted(k.id for k in obs.keys.values() if k.name in names and k.id != rotation.new_key_id)
    )


def _observe(
    key_id: str | None, mark: UseMark | None, since: float | None, obs: Observation
) -> tuple[UseMark | None, float | None]:
    """A key's (mark, since): ``since`` restarts whenever its reported use changes."""
    key = obs.keys.get(key_id or "")
    if key is None:
        return mark, since  # not observed: no evidence either way
    now_mark = mark_of(key)
    if now_mark != mark or since is None:
        return now_mark, obs.at
    return mark, since


def _observe_old(rotation: Rotation, obs: Observation) -> Rotation:
    mark, since = _observe(rotation.old_key_id, rotation.old_mark, rotation.old_mark_since, obs)
    return rotation.evolve(old_mark=mark, old_mark_since=since)


def _observe_pickup(rotation: Rotation, obs: Observation, timing: Timing) -> Rotation:
    if rotation.pickup_at is not None or rotation.baseline is None:
        return rotation
    new = obs.keys.get(rotation.new_key_id or "")
    if new is None or not use_advanced(rotation.baseline, mark_of(new)):
        return rotation
    return rotation.evolve(pickup_at=obs.at, drain_deadline=obs.at + timing.drain_timeout)


def quiet_since(since: float | None, now: float, timing: Timing) -> bool:
    """Reported use unchanged since ``since`` for ``drain_period + usage_lag`` of local time."""
    return since is not None and now - since >= timing.drain_period + timing.usage_lag


def old_is_quiet(rotation: Rotation, now: float, timing: Timing) -> bool:
    """The old key's use has not changed for ``drain_period + usage_lag`` of local time."""
    return quiet_since(rotation.old_mark_since, now, timing)


def decide_published(
    rotation: Rotation, obs: Observation, timing: Timing, names: frozenset[str], *, now: float
) -> Decision:
    """Next step of a published rotation, given one list pass."""
    strays = stray_keys(rotation, obs, names)
    if strays:
        return Decision("sweep", rotation, sweep_ids=strays)
    if rotation.old_key_id is None or rotation.old_deleted:
        return Decision("finish", rotation)
    if rotation.revoke_old_now:
        return Decision("delete-old", rotation, "revoke-old-now")
    rotation = _observe_pickup(_observe_old(rotation, obs), obs, timing)
    return _decide_pickup(rotation, obs, timing, now)


def _decide_pickup(rotation: Rotation, obs: Observation, timing: Timing, now: float) -> Decision:
    if rotation.pickup_at is None:
        if rotation.pickup_deadline is not None and now >= rotation.pickup_deadline:
            detail = "consumers never used the new key (no use beyond the baseline)"
            return Decision("stall", rotation, reasons.PICKUP_TIMEOUT, detail)
        return Decision("wait", rotation, "waiting for consumers to use the new key")
    if rotation.mode == reasons.EMERGENCY:
        return Decision("delete-old", rotation, "emergency: the new key is in use")
    return _decide_drain(rotation, timing, now, seen=rotation.old_key_id in obs.keys)


def _decide_drain(rotation: Rotation, timing: Timing, now: float, *, seen: bool) -> Decision:
    if rotation.old_disabled_at is not None:  # committed: disabled, now waiting to delete
        if now >= rotation.old_disabled_at + timing.disable_before_delete:
            return Decision("delete-old", rotation)
        return Decision("wait", rotation, "old key disabled; deleting after disable_before_delete")
    if seen and old_is_quiet(rotation, now, timing):  # quiet needs a sighting in this pass
        action = "disable-old" if timing.disable_before_delete > 0 else "delete-old"
        return Decision(action, rotation)
    if rotation.drain_deadline is not None and now >= rotation.drain_deadline:
        detail = "the old key still carries traffic"
        return Decision("stall", rotation, reasons.DRAIN_TIMEOUT, detail)
    return Decision("wait", rotation, "waiting for the old key to go quiet")


def decide_abort(
    rotation: Rotation, obs: Observation, timing: Timing, names: frozenset[str], *, now: float
) -> Decision:
    """Next step of an abort: old secret back, the new key drained and deleted, strays swept."""
    if rotation.republished_version is None:
        return Decision("republish", rotation)
    if not rotation.new_deleted:
        mark, since = _observe(rotation.new_key_id, rotation.new_mark, rotation.new_mark_since, obs)
        rotation = rotation.evolve(new_mark=mark, new_mark_since=since)
        if rotation.new_key_id in obs.keys and quiet_since(since, now, timing):
            return Decision("delete-new", rotation)
        if rotation.abort_deadline is not None and now >= rotation.abort_deadline:
            detail = "the new key still carries traffic after the old secret was restored"
            return Decision("stall", rotation, reasons.DRAIN_TIMEOUT, detail)
        return Decision("wait", rotation, "aborting: waiting for the new key to go quiet")
    ours = tuple(sorted(k.id for k in obs.keys.values() if k.name in names))
    if ours:
        return Decision("sweep", rotation, sweep_ids=ours)
    return Decision("finish", rotation)
