"""Operator commands, applied under the lease before the machine runs: resume, abort, finish
--keep-old, and the upgrade of a rotation in flight to emergency.

Every exit leaves exactly one served key, no orphan, and an outcome saying what happened.
"""

from __future__ import annotations

from typing import assert_never

from vault_rotator.engine import reasons
from vault_rotator.engine.context import Command, Pass, Progress, Verb
from vault_rotator.engine.create import recover_publish
from vault_rotator.engine.decide_end import keep_old_ending
from vault_rotator.engine.effects import delete_key, finish, reenable_old
from vault_rotator.engine.reasons import Phase
from vault_rotator.errors import EngineError, OldKeyUnknownError

__all__ = ["Command", "Verb", "apply_command"]


def apply_command(p: Pass, command: Command) -> Progress | None:
    """Apply ``command`` to the rotation in flight; a Progress ends the pass there."""
    match command.verb:
        case Verb.ROTATE if command.emergency:
            upgrade_to_emergency(p, command.revoke_old_now)
        case Verb.RESUME:
            resume(p)
        case Verb.ABORT:
            abort(p)
        case Verb.FINISH_KEEP_OLD:
            return finish_keep_old(p)
        case Verb.ROTATE:
            pass  # a rotation in flight just goes on
        case _:
            assert_never(command.verb)
    return None


def upgrade_to_emergency(p: Pass, revoke_old_now: bool) -> None:
    """``rotate --emergency`` on a rotation in flight: saved, so it survives restarts."""
    rot = p.rotation
    if rot.old_key_id is None and rot.start_version and not rot.old_missing:
        raise OldKeyUnknownError(
            f"{p.policy.ref}: emergency refused: the old key of this rotation is unknown"
        )
    revoke = revoke_old_now or rot.revoke_old_now
    if rot.mode != reasons.EMERGENCY or revoke != rot.revoke_old_now:
        p.save_rotation(mode=reasons.EMERGENCY, revoke_old_now=revoke, stalled=None)
        p.log.warning("rotation upgraded to emergency", revoke_old_now=revoke)


def resume(p: Pass) -> None:
    """Clear a stall and give the deadline that passed a fresh period."""
    rot = p.rotation
    if rot.stalled is None:
        return
    now = p.clock()
    changes: dict[str, object] = {"stalled": None}
    if rot.stalled.reason in (reasons.PICKUP_TIMEOUT, reasons.ACKS_MISSING):
        changes["pickup_deadline"] = now + p.policy.pickup_timeout_s
    elif rot.stalled.reason == reasons.DRAIN_TIMEOUT:
        key = "abort_deadline" if p.record.phase == Phase.ABORTING else "drain_deadline"
        changes[key] = now + p.policy.drain_timeout_s
    elif rot.stalled.reason == reasons.SECRET_CHANGED:
        changes.update(_accept_secret(p))
    p.save_rotation(**changes)
    p.log.info("rotation resumed", after=rot.stalled.reason)


def _accept_secret(p: Pass) -> dict[str, object]:
    """After "secret changed": go on only if the latest version still serves the key the
    rotation expects there (the new key; during an abort, once restored, the old one)."""
    rot = p.rotation
    phase = p.record.phase
    if phase not in (Phase.PUBLISHED, Phase.ABORTING):
        return {}
    restored = phase == Phase.ABORTING and rot.republished_version is not None
    expected = rot.old_key_id if restored else rot.new_key_id
    current = p.kv.read(p.policy.secret_path)
    if current is None or current.data.get("key_id") != expected:
        raise EngineError(
            f"{p.policy.ref}: the consumer secret does not serve {expected}; someone "
            f"else owns it now: run `vault-rotator finish {p.policy.ref} --keep-old` "
            "or restore it by hand"
        )
    key = "republished_version" if restored else "published_version"
    return {key: current.version}


def _settle_old_delete(p: Pass) -> None:
    """A delete of the old key was recorded but not its result: find out by listing."""
    rot = p.rotation
    write = p.record.provider_write
    if rot.old_deleted or not write or write.action != reasons.DELETE:
        return
    if write.target == rot.old_key_id and rot.old_key_id not in p.observe().keys:
        p.save_rotation(old_deleted=True)


def abort(p: Pass) -> None:
    """Start rolling back (the machine then runs it); refused once the old key is gone."""
    ref = p.policy.ref
    if p.record.phase in (Phase.ABORTING, Phase.CLEANUP):
        return  # already on its way back
    if p.record.phase == Phase.INTENT and not _published_unrecorded(p):
        p.save(p.record.begin_cleanup("aborted", aborted_at=p.clock()))
        return
    _settle_old_delete(p)
    rot = p.rotation
    if rot.old_deleted or rot.revoke_old_now:
        raise EngineError(f"{ref}: abort refused: the old key is already deleted")
    if rot.old_key_id is None:
        raise EngineError(
            f"{ref}: abort refused: there is no known old key to go back to "
            f"(first run or unknown key); use `vault-rotator finish {ref} --keep-old`"
        )
    reenable_old(p)
    p.save(p.record.begin_abort(p.clock()))
    p.log.warning("rotation aborting: restoring the old secret", old_key_id=rot.old_key_id)


def _published_unrecorded(p: Pass) -> bool:
    """In INTENT: had a crashed pass already published? Then record it (now PUBLISHED)."""
    pending, _ = p.store.read_pending(p.policy.env, p.policy.name)
    if pending is None or pending.rotation_id != p.rotation.id:
        return False
    return recover_publish(p, pending) is not None


def finish_keep_old(p: Pass) -> Progress:
    """End a published rotation now, keeping the old key alive (not deleted)."""
    if p.record.phase == Phase.INTENT:
        _published_unrecorded(p)
    phase = p.record.phase
    serving_new = phase == Phase.ABORTING and p.rotation.republished_version is None
    if phase != Phase.PUBLISHED and not serving_new:
        raise EngineError(
            f"{p.policy.ref}: finish --keep-old needs a published rotation whose new "
            f"key is served (this one is {phase}); use "
            f"`vault-rotator abort {p.policy.ref}`"
        )
    _settle_old_delete(p)
    rot = p.rotation
    reenable_old(p)
    names = p.attempt_names()
    for key in p.observe().keys.values():
        if key.name in names and key.id != rot.new_key_id:
            delete_key(p, key.id)  # strays: keys this rotation created but never served
    return finish(p, keep_old_ending(rot), new_key_id=rot.new_key_id, current=rot.new_key_id)
