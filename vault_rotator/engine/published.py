"""The PUBLISHED phase's effects (sweep, disable, delete the old key, done) and the CLEANUP
phase's (remove the keys of a rotation that ends unpublished).

Evidence of use comes only from records read whole: a key whose use is being judged (the new
key for pickup, the old key for its drain) that a list pass shows *unreadable*
(``KeyRecord.problem``) is taken as not observed in that pass (:func:`.decide.readable`), the
same as a key missing from a pass: neither in use, nor quiet, nor gone. It still counts as
listed (a 404 for it is "delete unconfirmed"), its name still matches for the sweep, and if a
deadline passes meanwhile the stall's detail says the record was unreadable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.ack_store import AckStore, report
from vault_rotator.engine.acks import MAX_EXPECTED, AckFacts, AckPolicy, judge_rotation, present
from vault_rotator.engine.context import Carry, Pass, Progress
from vault_rotator.engine.decide import (
    Decision,
    Observation,
    PublishedAction,
    PublishedFacts,
    readable,
    secret_changed,
)
from vault_rotator.engine.decide_end import (
    CleanupAction,
    CleanupFacts,
    success_ending,
    unpublished_ending,
)
from vault_rotator.engine.effects import delete_all, delete_key, finish, set_disabled, stall
from vault_rotator.policy import format_duration
from vault_rotator.ports.kv import Versioned

log = structlog.get_logger("vault_rotator.engine")


def listed(p: Pass, carry: Carry) -> Observation:
    """The list pass this turn judges by: one still current, else one asked for after the
    last provider write recorded (the caller's next, or this pass's own: see ``Pass``)."""
    if carry.obs is None:
        write = p.record.provider_write
        carry.obs = p.routine_listing(asked_after=write.at if write else 0.0).obs
    return carry.obs


def judged_readable(
    p: Pass, obs: Observation, judged: tuple[str | None, ...]
) -> tuple[Observation, Mapping[str, str]]:
    """:func:`.decide.readable`, saying in the log which judged keys gave no evidence."""
    evidence, unreadable = readable(obs, judged)
    for key_id, problem in unreadable.items():
        p.log.warning(
            "a key this rotation judges is listed unreadable; no evidence from it this pass",
            key_id=key_id,
            problem=problem,
        )
    return evidence, unreadable


def observe_published(p: Pass, carry: Carry) -> PublishedFacts:
    rot = p.rotation
    obs = listed(p, carry)
    if carry.secret_read is None:  # read once a pass (nothing in this phase writes it)
        carry.secret_read = p.kv.read(p.policy.secret_path)
    secret = carry.secret_read
    evidence, unreadable = judged_readable(p, obs, (rot.old_key_id, rot.new_key_id))
    return PublishedFacts(
        rotation=rot,
        write=p.record.provider_write,
        secret=secret,
        obs=evidence,
        unreadable=unreadable,
        names=p.attempt_names(),
        timing=p.timing(),
        now=p.clock(),
        acks=observe_acks(p),
    )


def observe_acks(p: Pass) -> AckFacts | None:
    """The key's acks, judged against this rotation, when its policy uses them (not in an
    emergency, which ignores them); each refused one logged once."""
    policy = AckPolicy.of(p.policy)
    if not policy.active or p.rotation.mode == reasons.EMERGENCY:
        return None
    read = AckStore(p.kv, p.store.prefix).read(p.policy.env, p.policy.name, policy)
    facts = judge_rotation(read, p.rotation)
    report(p.policy.ref, facts)
    if policy.drain_on_acks and p.rotation.ack_expected is None:
        here = len(present(facts, p.clock())) + facts.unread
        if here > MAX_EXPECTED:
            log.warning(
                "drain_on_acks off for this rotation: more instances than it waits for",
                key=p.policy.ref, instances=here, most=MAX_EXPECTED,
                drain=f"the full drain_period ({format_duration(p.policy.drain_period_s)})",
            )  # fmt: skip
    return facts


def apply_published(p: Pass, decision: Decision[PublishedAction], carry: Carry) -> Progress | None:
    match decision.action:
        case PublishedAction.WAIT:
            return p.progress(decision.reason)
        case PublishedAction.SWEEP:
            return sweep(p, decision.sweep_ids)
        case PublishedAction.DISABLE_OLD:
            return disable_old(p)
        case PublishedAction.DELETE_OLD | PublishedAction.OLD_GONE:
            gone = decision.action == PublishedAction.OLD_GONE
            return delete_old(p, carry.secret_read, gone=gone)
        case PublishedAction.FINISH:
            rot = p.rotation
            ending = success_ending(rot)
            return finish(p, ending, new_key_id=rot.new_key_id, current=rot.new_key_id)
        case PublishedAction.STALL:
            return stall(p, decision.reason, decision.detail)
        case _:
            assert_never(decision.action)


def sweep(p: Pass, key_ids: tuple[str, ...]) -> Progress:
    if (stalled := delete_all(p, key_ids)) is not None:
        return stalled
    p.fault("sweep")
    return p.progress("removing keys this rotation created but did not publish")


def disable_old(p: Pass) -> Progress:
    rot = p.rotation
    assert rot.old_key_id is not None
    # Saved first (with "about to disable"): a crash right after the disable must still lead
    # to a re-enable.
    p.stage(p.record.with_rotation(old_disabled_at=p.clock()))
    set_disabled(p, rot.old_key_id, disabled=True)
    p.fault("disable")
    return p.progress("old key disabled; deleting after disable_before_delete")


def delete_old(p: Pass, secret: Versioned | None, *, gone: bool = False) -> Progress | None:
    """The consumer secret as read for this very decision (still ours, else stall), then the
    old key deleted; the loop then decides again on the same list pass (its next turn reads
    the secret again). ``gone``: a delete cut short by a crash went through (a list pass after
    it no longer shows the key): only recorded, not redone."""
    rot = p.rotation
    assert rot.old_key_id is not None
    if gone:
        p.stage(p.record.with_rotation(old_deleted=True))
        return None
    if (changed := secret_changed(rot, secret)) is not None:
        return stall(p, reasons.SECRET_CHANGED, changed)
    deleted = delete_key(p, rot.old_key_id)
    p.fault("delete")
    if not deleted and rot.old_key_id in p.observe().keys:
        return stall(
            p,
            reasons.DELETE_UNCONFIRMED,
            f"the provider answered 404 for {rot.old_key_id} yet still lists it",
        )
    p.stage(p.record.with_rotation(old_deleted=True))
    return None


# -- CLEANUP: before publish, remove what this rotation created ---------------------------


def observe_cleanup(p: Pass, carry: Carry) -> CleanupFacts:
    obs = listed(p, carry)
    rot = p.rotation
    pending, _ = p.store.read_pending(p.policy.env, p.policy.name)
    created = pending.new_key_id if pending and pending.rotation_id == rot.id else ""
    current = p.kv.read(p.policy.secret_path)
    served = current.data.get("key_id") if current and not current.deleted else None
    return CleanupFacts(
        rotation=rot,
        obs=obs,
        names=p.attempt_names(),
        created=created,
        served=served if isinstance(served, str) else None,
    )


def apply_cleanup(p: Pass, decision: Decision[CleanupAction], _carry: Carry) -> Progress | None:
    match decision.action:
        case CleanupAction.DELETE_KEYS:
            if (stalled := delete_all(p, decision.sweep_ids)) is not None:
                return stalled
            return p.progress(decision.reason)
        case CleanupAction.FINISH:
            ending = unpublished_ending(p.rotation)
            return finish(p, ending, new_key_id=None, current=p.record.current_key_id)
        case CleanupAction.STALL:
            return stall(p, decision.reason, decision.detail)
        case _:
            assert_never(decision.action)
