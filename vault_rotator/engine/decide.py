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
from vault_rotator.provider.port import KeyRecord


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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do next, and the rotation's updated observations."""

    action: str  # "wait" | "delete-old" | "sweep" | "finish" | "stall"
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


def _observe_old(rotation: Rotation, obs: Observation) -> Rotation:
    old = obs.keys.get(rotation.old_key_id or "")
    if old is None:
        return rotation  # not observed: no evidence either way
    mark = mark_of(old)
    if rotation.old_mark != mark or rotation.old_mark_since is None:
        return rotation.evolve(old_mark=mark, old_mark_since=obs.at)
    return rotation


def _observe_pickup(rotation: Rotation, obs: Observation, timing: Timing) -> Rotation:
    if rotation.pickup_at is not None or rotation.baseline is None:
        return rotation
    new = obs.keys.get(rotation.new_key_id or "")
    if new is None or not use_advanced(rotation.baseline, mark_of(new)):
        return rotation
    return rotation.evolve(pickup_at=obs.at, drain_deadline=obs.at + timing.drain_timeout)


def old_is_quiet(rotation: Rotation, now: float, timing: Timing) -> bool:
    """The old key's use has not changed for ``drain_period + usage_lag`` of local time."""
    since = rotation.old_mark_since
    return since is not None and now - since >= timing.drain_period + timing.usage_lag


def decide_published(
    rotation: Rotation, obs: Observation, timing: Timing, names: frozenset[str], *, now: float
) -> Decision:
    """Next step of a published rotation, given one list pass."""
    strays = stray_keys(rotation, obs, names)
    if strays:
        return Decision("sweep", rotation, sweep_ids=strays)
    if rotation.old_key_id is None or rotation.old_deleted:
        return Decision("finish", rotation)
    rotation = _observe_pickup(_observe_old(rotation, obs), obs, timing)
    if rotation.pickup_at is None:
        if rotation.pickup_deadline is not None and now >= rotation.pickup_deadline:
            detail = "consumers never used the new key (no use beyond the baseline)"
            return Decision("stall", rotation, reasons.PICKUP_TIMEOUT, detail)
        return Decision("wait", rotation, "waiting for consumers to use the new key")
    return _decide_drain(rotation, timing, now)


def _decide_drain(rotation: Rotation, timing: Timing, now: float) -> Decision:
    if old_is_quiet(rotation, now, timing):
        return Decision("delete-old", rotation)
    if rotation.drain_deadline is not None and now >= rotation.drain_deadline:
        detail = "the old key still carries traffic"
        return Decision("stall", rotation, reasons.DRAIN_TIMEOUT, detail)
    return Decision("wait", rotation, "waiting for the old key to go quiet")
