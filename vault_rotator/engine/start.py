"""The IDLE phase's effects: tidy a stale pending record; start a rotation (preflight, intent).

Starting has no side effect but the intent: the preflight (:mod:`.preflight`) checks everything
first, and an old key the secret names but the provider does not list is looked for again
``usage_lag`` later before the rotation runs as a first run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import assert_never

from vault_rotator.engine import reasons
from vault_rotator.engine.context import Carry, Pass, Progress, Verb
from vault_rotator.engine.decide import Decision
from vault_rotator.engine.decide_create import IdleAction, IdleFacts
from vault_rotator.engine.preflight import Plan, preflight
from vault_rotator.engine.state import Rotation
from vault_rotator.errors import OldKeyUnknownError


def observe_idle(p: Pass, carry: Carry) -> IdleFacts:
    if carry.pending_version is None and p.trusted:
        carry.pending, carry.pending_version = None, 0  # known to have none (see Engine)
    if carry.pending_version is None:
        carry.pending, carry.pending_version = p.store.read_pending(p.policy.env, p.policy.name)
    start = p.start and p.command.verb == Verb.ROTATE
    return IdleFacts(stale_pending=carry.pending_version > 0, start=start)


def apply_idle(p: Pass, decision: Decision[IdleAction], carry: Carry) -> Progress | None:
    match decision.action:
        case IdleAction.REST:
            return p.progress()
        case IdleAction.DROP_STALE_PENDING:
            p.log.warning("destroying a stale pending record", had_value=carry.pending is not None)
            p.session.hold()
            p.store.destroy_pending(p.policy.env, p.policy.name)
            carry.pending, carry.pending_version = None, 0
            return None
        case IdleAction.START:
            start(p, carry)  # pending was just read: none (a stale one is dropped first)
            return None
        case _:
            assert_never(decision.action)


def start(p: Pass, carry: Carry) -> None:
    """Preflight, then stage the intent: IDLE -> INTENT.

    The intent is written with the first provider write's "about to create" (and the lease
    it takes): nothing happens in between but reads.
    """
    command = p.command
    listing = p.routine_listing()
    plan = preflight(
        p.policy,
        p.kv,
        p.store,
        p.provider,
        now=p.clock(),
        capabilities_checked=True,
        keys=listing.obs.keys,
    )
    carry.secret_read = plan.secret  # the old secret saved with the new value comes from it
    old_id, missing = _settle_old_key(p, plan)
    if command.emergency and plan.old.unknown:
        raise OldKeyUnknownError(
            f"{p.policy.ref}: emergency rotation refused: the old key is unknown (the "
            "secret has no key_id); set adopt_key_id in the policy so it can be deleted"
        )
    now = p.clock()
    old = plan.old_key if plan.old_key and plan.old_key.id == old_id else None
    rotation = Rotation(
        id=p.new_id(),
        attempt=1,
        date=datetime.fromtimestamp(now, UTC).date().isoformat(),
        policy=p.policy.to_dict(),
        permissions=plan.permissions,
        started_at=now,
        start_version=plan.start_version,
        mode=reasons.EMERGENCY if command.emergency else reasons.NORMAL,
        revoke_old_now=command.emergency and command.revoke_old_now,
        trigger=command.trigger,
        by=command.by,
        old_key_id=old_id,
        old_key_name=old.name if old else None,
        old_missing=missing,
    )
    p.stage(p.record.start(rotation, dialect=plan.dialect or p.record.dialect))
    p.log.info(
        "rotation started",
        rotation_id=rotation.id,
        mode=rotation.mode,
        old_key_id=old_id,
        old_key_unknown=plan.old.unknown,
        old_key_missing=missing,
        trigger=command.trigger,
        by=command.by,
    )


def _settle_old_key(p: Pass, plan: Plan) -> tuple[str | None, bool]:
    """(old key id, deleted outside?): a key missing from two passes usage_lag apart is gone."""
    if plan.old.missing_id is None:
        return (plan.old_key.id if plan.old_key else None), False
    lag = p.policy.provider.usage_lag_s
    p.session.sleep_until(p.clock() + lag, p.sleep)
    if plan.old.missing_id in p.observe().keys:
        return plan.old.missing_id, False
    p.log.warning(
        "the served key was deleted outside vault-rotator; rotating as a first run",
        key_id=plan.old.missing_id,
    )
    return None, True
