"""Pure decisions of a published or aborting rotation: is the new key in use, is the old one
quiet, what next. (The creation phase decides in :mod:`.decide_create`; clean-up and the
outcome in :mod:`.decide_end`; the table that runs them all is :mod:`.machine`.)

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
* Acks (:mod:`.acks`, read only when the policy uses them): ``require_acks`` holds the old
  key's disable or delete (a stall ``acks-missing`` at the pickup deadline); ``drain_on_acks``
  may end the drain early. Neither replaces the evidence above; an emergency ignores both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Generic, TypeVar

from vault_rotator.engine import acks as ack_rules
from vault_rotator.engine import reasons
from vault_rotator.engine.acks import AckFacts
from vault_rotator.engine.state import ProviderWrite, Rotation, UseMark
from vault_rotator.ports.kv import Versioned
from vault_rotator.ports.provider import KeyRecord


@dataclass(frozen=True, slots=True)
class Observation:
    """One list pass of an account: keys by id, and the local time the pass finished.

    ``by_name``: the ids listed under each name (built by :meth:`of`; empty otherwise), so a
    rotation finds its keys by name without scanning the whole account.
    """

    keys: Mapping[str, KeyRecord]
    at: float
    by_name: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: list[KeyRecord] | tuple[KeyRecord, ...], at: float) -> Observation:
        by_name: dict[str, tuple[str, ...]] = {}
        for key in keys:
            by_name[key.name] = (*by_name.get(key.name, ()), key.id)
        return cls({k.id: k for k in keys}, at, by_name)

    def named(self, names: frozenset[str]) -> list[KeyRecord]:
        """The listed keys with one of ``names``."""
        if not self.by_name and self.keys:  # built without the index: scan
            return [k for k in self.keys.values() if k.name in names]
        ids = (i for name in names for i in self.by_name.get(name, ()))
        return [self.keys[i] for i in ids if i in self.keys]


@dataclass(frozen=True, slots=True)
class Timing:
    """The durations a published rotation is judged by (seconds)."""

    usage_lag: float
    pickup_timeout: float
    drain_period: float
    drain_timeout: float
    disable_before_delete: float = 0.0


class PublishedAction(enum.StrEnum):
    """What a published rotation does next."""

    WAIT = "wait"  # for pickup, for the old key to go quiet, or out disable_before_delete
    SWEEP = "sweep"  # delete keys this rotation created but did not publish
    DISABLE_OLD = "disable-old"
    DELETE_OLD = "delete-old"  # the secret re-read first
    OLD_GONE = "old-gone"  # a delete of the old key cut short had gone through: not redone
    FINISH = "finish"  # done: the outcome is chosen by decide_end.success_outcome
    STALL = "stall"  # both keys stay alive; an operator decides


class AbortAction(enum.StrEnum):
    """What an aborting rotation does next."""

    WAIT = "wait"  # for the new key to go quiet
    REPUBLISH = "republish"  # the old secret's whole data map, back by CAS
    REDO_DELETE_NEW = "redo-delete-new"  # a delete of the new key was recorded: make it again
    NEW_GONE = "new-gone"  # a delete of the new key cut short had gone through: not redone
    DELETE_NEW = "delete-new"
    SWEEP = "sweep"
    FINISH = "finish"  # outcome aborted
    STALL = "stall"


A = TypeVar("A", bound=enum.StrEnum)


@dataclass(frozen=True, slots=True)
class Decision(Generic[A]):
    """What to do next, why, and the rotation's updated observations (saved with it)."""

    action: A
    rotation: Rotation | None  # None: nothing in flight (an idle record)
    reason: str = ""
    detail: str = ""
    sweep_ids: tuple[str, ...] = field(default_factory=tuple)
    mark: UseMark | None = None  # the baseline a publish records


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
    return tuple(sorted(k.id for k in obs.named(names) if k.id != rotation.new_key_id))


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
    rotation: Rotation,
    obs: Observation,
    timing: Timing,
    names: frozenset[str],
    *,
    now: float,
    acks: AckFacts | None = None,
) -> Decision[PublishedAction]:
    """Next step of a published rotation, given one list pass (and the acks read, if any)."""
    strays = stray_keys(rotation, obs, names)
    if strays:
        return Decision(PublishedAction.SWEEP, rotation, sweep_ids=strays)
    if rotation.old_key_id is None or rotation.old_deleted:
        return Decision(PublishedAction.FINISH, rotation)
    if rotation.revoke_old_now:
        return Decision(PublishedAction.DELETE_OLD, rotation, "revoke-old-now")
    rotation = _observe_pickup(_observe_old(rotation, obs), obs, timing)
    rotation = ack_rules.observe_acks(rotation, acks, now)
    return _decide_pickup(rotation, obs, timing, now, acks)


def _decide_pickup(
    rotation: Rotation, obs: Observation, timing: Timing, now: float, acks: AckFacts | None
) -> Decision[PublishedAction]:
    if rotation.pickup_at is None:
        if rotation.pickup_deadline is not None and now >= rotation.pickup_deadline:
            detail = "consumers never used the new key (no use beyond the baseline)"
            return Decision(PublishedAction.STALL, rotation, reasons.PICKUP_TIMEOUT, detail)
        return Decision(PublishedAction.WAIT, rotation, "waiting for consumers to use the new key")
    if rotation.mode == reasons.EMERGENCY:
        return Decision(PublishedAction.DELETE_OLD, rotation, "emergency: the new key is in use")
    return _decide_drain(rotation, timing, now, seen=rotation.old_key_id in obs.keys, acks=acks)


def _decide_drain(
    rotation: Rotation,
    timing: Timing,
    now: float,
    *,
    seen: bool,
    acks: AckFacts | None = None,
) -> Decision[PublishedAction]:
    if rotation.old_disabled_at is not None:  # committed: disabled, now waiting to delete
        if now >= rotation.old_disabled_at + timing.disable_before_delete:
            return Decision(PublishedAction.DELETE_OLD, rotation)
        return Decision(
            PublishedAction.WAIT, rotation, "old key disabled; deleting after disable_before_delete"
        )
    if (held := _ack_hold(rotation, acks, now)) is not None:  # require_acks not met
        return held
    early = ack_rules.ends_drain_early(rotation, acks, timing.usage_lag, now)
    if seen and (early or old_is_quiet(rotation, now, timing)):  # quiet needs a sighting
        action = (
            PublishedAction.DISABLE_OLD
            if timing.disable_before_delete > 0
            else PublishedAction.DELETE_OLD
        )
        return Decision(action, rotation)
    if rotation.drain_deadline is not None and now >= rotation.drain_deadline:
        detail = "the old key still carries traffic"
        return Decision(PublishedAction.STALL, rotation, reasons.DRAIN_TIMEOUT, detail)
    return Decision(PublishedAction.WAIT, rotation, "waiting for the old key to go quiet")


def _ack_hold(
    rotation: Rotation, acks: AckFacts | None, now: float
) -> Decision[PublishedAction] | None:
    """Wait for ``require_acks``, or stall acks-missing once the pickup deadline passed."""
    held = ack_rules.hold(rotation, acks, now)
    if held is None:
        return None
    if held.stall:
        return Decision(PublishedAction.STALL, rotation, reasons.ACKS_MISSING, held.detail)
    return Decision(PublishedAction.WAIT, rotation, f"waiting for acks: {held.detail}")


def decide_abort(
    rotation: Rotation, obs: Observation, timing: Timing, names: frozenset[str], *, now: float
) -> Decision[AbortAction]:
    """Next step of an abort: old secret back, the new key drained and deleted, strays swept."""
    if rotation.republished_version is None:
        return Decision(AbortAction.REPUBLISH, rotation)
    if not rotation.new_deleted:
        mark, since = _observe(rotation.new_key_id, rotation.new_mark, rotation.new_mark_since, obs)
        rotation = rotation.evolve(new_mark=mark, new_mark_since=since)
        if rotation.new_key_id in obs.keys and quiet_since(since, now, timing):
            return Decision(AbortAction.DELETE_NEW, rotation)
        if rotation.abort_deadline is not None and now >= rotation.abort_deadline:
            detail = "the new key still carries traffic after the old secret was restored"
            return Decision(AbortAction.STALL, rotation, reasons.DRAIN_TIMEOUT, detail)
        return Decision(AbortAction.WAIT, rotation, "aborting: waiting for the new key to go quiet")
    ours = tuple(sorted(k.id for k in obs.named(names)))
    if ours:
        return Decision(AbortAction.SWEEP, rotation, sweep_ids=ours)
    return Decision(AbortAction.FINISH, rotation)


# -- a whole pass of the published and aborting phases -------------------------------------


@dataclass(frozen=True, slots=True)
class PublishedFacts:
    """What a published rotation's pass gathered before deciding."""

    rotation: Rotation
    write: ProviderWrite | None  # the provider write recorded last (a crash may have cut it)
    secret: Versioned | None  # the consumer secret as it is now
    obs: Observation  # the list pass, without the judged keys it lists unreadable
    unreadable: Mapping[str, str]  # judged key id -> why its record does not parse
    names: frozenset[str]  # the names of every attempt's key
    timing: Timing
    now: float
    acks: AckFacts | None = None  # read only when the policy uses acks (engine/acks.py)


@dataclass(frozen=True, slots=True)
class AbortingFacts:
    """What an aborting rotation's pass gathered before deciding."""

    rotation: Rotation
    write: ProviderWrite | None
    obs: Observation
    unreadable: Mapping[str, str]
    names: frozenset[str]
    timing: Timing
    now: float


def readable(obs: Observation, judged: Sequence[str | None]) -> tuple[Observation, dict[str, str]]:
    """``obs`` without the judged keys it lists unreadable, and those keys' problems.

    A judged key listed unreadable is not observed in this pass: neither in use, nor quiet,
    nor gone (the same as a key missing from the pass).
    """
    unreadable = {
        key_id: record.problem
        for key_id in judged
        if key_id and (record := obs.keys.get(key_id)) and record.problem is not None
    }
    if not unreadable:
        return obs, unreadable
    kept = {key_id: k for key_id, k in obs.keys.items() if key_id not in unreadable}
    return Observation(kept, obs.at, obs.by_name), unreadable


def noting(decision: Decision[A], unreadable: Mapping[str, str]) -> Decision[A]:
    """A stall decided while judged keys were unreadable says so in its detail."""
    if decision.action != "stall" or not unreadable:
        return decision
    notes = "; ".join(
        f"{key_id} is listed unreadable ({why})" for key_id, why in unreadable.items()
    )
    return replace(decision, detail=f"{decision.detail}; note: {notes}")


def secret_changed(rotation: Rotation, current: Versioned | None) -> str | None:
    """Why the consumer secret is no longer ours, or None (a later version = changed)."""
    if current is None or current.version != rotation.published_version:
        version = current.version if current else 0
        ours = rotation.published_version
        return f"version {version} of the consumer secret was written after ours ({ours})"
    if current.data.get("key_id") != rotation.new_key_id:
        return "the consumer secret no longer serves our key"
    return None


def _redo(write: ProviderWrite | None, target: str | None) -> bool:
    return write is not None and write.action == reasons.DELETE and write.target == target


def _gone(facts: PublishedFacts | AbortingFacts, key_id: str | None) -> bool:
    """``key_id`` is neither listed nor listed unreadable in this pass."""
    return key_id is not None and key_id not in facts.obs.keys and key_id not in facts.unreadable


def decide_published_pass(facts: PublishedFacts) -> Decision[PublishedAction]:
    """A published rotation's pass: the secret still ours, a cut delete redone, then the rest."""
    rot = facts.rotation
    if (changed := secret_changed(rot, facts.secret)) is not None:
        return Decision(PublishedAction.STALL, rot, reasons.SECRET_CHANGED, changed)
    if _redo(facts.write, rot.old_key_id) and not rot.old_deleted:
        if _gone(facts, rot.old_key_id):  # this pass lists after the cut: it went through
            return Decision(PublishedAction.OLD_GONE, rot, "a delete cut short had gone through")
        # Still listed (or unreadable): not deleted yet, or not known to be; a 404 is fine.
        return Decision(PublishedAction.DELETE_OLD, rot, "a delete of the old key was cut short")
    decision = decide_published(
        rot, facts.obs, facts.timing, facts.names, now=facts.now, acks=facts.acks
    )
    return noting(decision, facts.unreadable)


def decide_aborting_pass(facts: AbortingFacts) -> Decision[AbortAction]:
    """An aborting rotation's pass: a cut delete of the new key redone, then decide_abort."""
    rot = facts.rotation
    if _redo(facts.write, rot.new_key_id) and not rot.new_deleted:
        if _gone(facts, rot.new_key_id):  # this pass lists after the cut: it went through
            return Decision(AbortAction.NEW_GONE, rot, "a delete cut short had gone through")
        # Still listed (or unreadable): not deleted yet, or not known to be; a 404 is fine.
        return Decision(AbortAction.REDO_DELETE_NEW, rot, "a delete of the new key was cut short")
    decision = decide_abort(rot, facts.obs, facts.timing, facts.names, now=facts.now)
    return noting(decision, facts.unreadable)
