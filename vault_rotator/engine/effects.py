"""Effects every phase shares: fenced provider writes, stalls and the end of a rotation.

Each saves what it is about to do before doing it (see :mod:`.session`), so a pass that dies
anywhere leaves a record its successor can finish. A stall and the end of a rotation are the
last write of their pass: saved with the lease given back, in one write.
"""

from __future__ import annotations

from collections.abc import Sequence

from vault_rotator.engine import reasons
from vault_rotator.engine.context import Pass, Progress
from vault_rotator.engine.decide_end import Ending
from vault_rotator.engine.state import Outcome, Stall


def delete_key(p: Pass, key_id: str) -> bool:
    """Delete a key at the provider, fenced; False if it was already gone."""
    budget = p.provider.worst_case_seconds()
    p.session.before_provider_write(reasons.DELETE, key_id, budget)
    deleted = p.provider.delete_key(key_id)
    p.log.info("provider key deleted", key_id=key_id, already_gone=not deleted)
    return deleted


def delete_all(p: Pass, key_ids: Sequence[str]) -> Progress | None:
    """Delete keys; a 404 for a key a fresh list pass still shows is a stall."""
    gone_already = [key_id for key_id in key_ids if not delete_key(p, key_id)]
    if gone_already:
        listed = p.observe().keys
        if still := [key_id for key_id in gone_already if key_id in listed]:
            detail = f"the provider answered 404 for {', '.join(still)} yet still lists it"
            return stall(p, reasons.DELETE_UNCONFIRMED, detail)
    return None


def set_disabled(p: Pass, key_id: str, *, disabled: bool) -> None:
    """Disable or re-enable a key at the provider, fenced."""
    action = reasons.DISABLE if disabled else reasons.ENABLE
    p.session.before_provider_write(action, key_id, p.provider.worst_case_seconds())
    p.provider.update_key(key_id, disabled=disabled)
    p.log.info(f"provider key {action}d", key_id=key_id)


def reenable_old(p: Pass) -> None:
    """Every exit that does not delete the old key re-enables it first."""
    rot = p.rotation
    if rot.old_disabled_at is not None and rot.old_key_id and not rot.old_deleted:
        set_disabled(p, rot.old_key_id, disabled=False)
        p.stage(p.record.with_rotation(old_disabled_at=None))  # a repeat enable is harmless


def find_version(p: Pass, after: int, *, aborted: bool) -> int | None:
    """The first version after ``after`` that this rotation wrote (its abort, if asked)."""
    path = p.policy.secret_path
    for version in range(after + 1, p.kv.current_version(path) + 1):
        got = p.kv.read(path, version)
        if got is None or got.data.get("rotation_id") != p.rotation.id:
            continue
        if bool(got.data.get("aborted")) == aborted:
            return version
    return None


def stall(p: Pass, reason: str, detail: str) -> Progress:
    """Stop and wait for an operator; both keys stay alive (the old one re-enabled)."""
    reenable_old(p)
    stalled = Stall(reason, detail, p.clock())
    p.session.save_and_release(p.record.with_rotation(stalled=stalled))
    p.log.warning("rotation stalled", reason=reason, detail=detail)
    p.listener.stalled(p.policy, p.rotation, stalled)
    return p.progress(f"stalled: {reason}")


def finish(p: Pass, ending: Ending, *, new_key_id: str | None, current: str | None) -> Progress:
    """Done: pending is destroyed, then the record goes idle with the outcome (and the lease
    given back) in one write. Nothing needs pending once a rotation ends: a crash between the
    two leaves the rotation to end again, with nothing left to destroy."""
    rotation = p.rotation
    outcome = Outcome(
        rotation_id=rotation.id,
        outcome=ending.outcome,
        at=p.clock(),
        trigger=rotation.trigger,
        by=rotation.by,
        old_key_id=rotation.old_key_id,
        new_key_id=new_key_id,
        detail=ending.detail,
    )
    p.session.hold()  # destroying pending is a side effect: under the lease
    p.store.destroy_pending(p.policy.env, p.policy.name)
    p.fault("destroy")
    p.session.save_and_release(p.record.finished(outcome, current_key_id=current))
    p.fault("done")
    p.listener.finished(p.policy, outcome, rotation)  # the canonical line, metrics, webhooks
    return p.progress(outcome=outcome)
