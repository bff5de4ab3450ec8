"""The ABORTING phase's effects: the rotation in reverse.

The old secret's whole data map is written back (marked with ``rotation_id`` and ``aborted``),
the new key drains like an old one and is deleted, strays are swept, and the outcome is
``aborted``. Abort starts in :mod:`.operator`; what to do next is
:func:`.decide.decide_aborting_pass`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import assert_never

from vault_rotator.engine import reasons
from vault_rotator.engine.context import Carry, Pass, Progress
from vault_rotator.engine.decide import AbortAction, AbortingFacts, Decision
from vault_rotator.engine.decide_end import ABORT_ENDING
from vault_rotator.engine.effects import (
    delete_key,
    find_version,
    finish,
    reenable_old,
    stall,
)
from vault_rotator.engine.published import judged_readable, listed, sweep
from vault_rotator.errors import CasConflictError, EngineError


def observe_aborting(p: Pass, carry: Carry) -> AbortingFacts:
    rot = p.rotation
    judged = () if rot.new_deleted else (rot.new_key_id,)
    evidence, unreadable = judged_readable(p, listed(p, carry), judged)
    return AbortingFacts(
        rotation=rot,
        write=p.record.provider_write,
        obs=evidence,
        unreadable=unreadable,
        names=p.attempt_names(),
        timing=p.timing(),
        now=p.clock(),
    )


def apply_aborting(  # noqa: PLR0911 (one return per action)
    p: Pass, decision: Decision[AbortAction], _carry: Carry
) -> Progress | None:
    match decision.action:
        case AbortAction.WAIT:
            return p.progress(decision.reason)
        case AbortAction.REPUBLISH:
            return republish(p)
        case AbortAction.REDO_DELETE_NEW:
            delete_key(p, p.rotation.new_key_id or "")  # we may have deleted it: a 404 is fine
            p.stage(p.record.with_rotation(new_deleted=True))
            return None
        case AbortAction.NEW_GONE:  # a delete cut short went through: recorded, not redone
            p.stage(p.record.with_rotation(new_deleted=True))
            return None
        case AbortAction.DELETE_NEW:
            return delete_new(p)
        case AbortAction.SWEEP:
            return sweep(p, decision.sweep_ids)
        case AbortAction.FINISH:
            return finish(p, ABORT_ENDING, new_key_id=None, current=p.rotation.old_key_id)
        case AbortAction.STALL:
            return stall(p, decision.reason, decision.detail)
        case _:
            assert_never(decision.action)


def delete_new(p: Pass) -> Progress:
    """Delete the drained new key, once the secret is checked to still hold the restore."""
    rot = p.rotation
    current = p.kv.read(p.policy.secret_path)
    if current is None or current.version != rot.republished_version:
        detail = "the consumer secret was written after the abort restored it"
        return stall(p, reasons.SECRET_CHANGED, detail)
    delete_key(p, rot.new_key_id or "")
    p.fault("delete")
    p.stage(p.record.with_rotation(new_deleted=True))
    return p.progress("aborting: new key deleted; confirming")


def republish(p: Pass) -> Progress:
    """Write the old secret's whole data map back, marked as our abort, by CAS."""
    rot = p.rotation
    pending, _ = p.store.read_pending(p.policy.env, p.policy.name)
    if pending is None or pending.rotation_id != rot.id or pending.old_secret is None:
        raise EngineError(f"{p.policy.ref}: the old secret is not in pending; cannot abort")
    reenable_old(p)
    path = p.policy.secret_path
    data = dict(pending.old_secret) | {
        "rotation_id": rot.id,
        "aborted": True,
        "rotated_at": datetime.fromtimestamp(p.clock(), UTC).isoformat(),
    }
    p.session.hold()  # the consumer write is made under the lease
    current = p.kv.current_version(path)
    version = find_version(p, rot.published_version or 0, aborted=True)
    if version is None and current == rot.published_version:
        try:
            p.session.hold()
            version = p.kv.write(path, data, cas=current)
        except CasConflictError:
            version = find_version(p, rot.published_version or 0, aborted=True)
    if version is None:
        detail = "the consumer secret changed; abort cannot restore it"
        return stall(p, reasons.SECRET_CHANGED, detail)
    p.fault("publish")
    deadline = p.clock() + p.policy.drain_timeout_s
    p.save_rotation(republished_version=version, abort_deadline=deadline)
    p.log.info("old secret republished", version=version, old_key_id=rot.old_key_id)
    return p.progress("aborting: waiting for the new key to go quiet")
