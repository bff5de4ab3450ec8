"""Operator paths applied at the start of a pass: resume, abort, finish --keep-old, emergency.

Every exit leaves exactly one served key, no orphan, and an outcome saying what happened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vault_rotator.engine import reasons
from vault_rotator.engine.passes import PassBase, Progress
from vault_rotator.errors import EngineError


class Verb(enum.StrEnum):
    ROTATE = "rotate"
    RESUME = "resume"
    ABORT = "abort"
    FINISH_KEEP_OLD = "finish-keep-old"


@dataclass(frozen=True, slots=True)
class Command:
    """What an operator (CLI, daemon, control API) asks of a key."""

    verb: Verb = Verb.ROTATE
    emergency: bool = False
    revoke_old_now: bool = False
    trigger: str = "cli"
    by: str = ""


class OperatorSteps(PassBase):
    """Operator requests, applied under the lease before the pass moves on."""

    def upgrade_to_emergency(self, revoke_old_now: bool) -> None:
        """``rotate --emergency`` on a rotation in flight: saved, so it survives restarts."""
        rot = self.rotation
        if rot.old_key_id is None and rot.start_version and not rot.old_missing:
            raise EngineError(
                f"{self.policy.ref}: emergency refused: the old key of this rotation is unknown"
            )
        revoke = revoke_old_now or rot.revoke_old_now
        if rot.mode != reasons.EMERGENCY or revoke != rot.revoke_old_now:
            self.save_rotation(mode=reasons.EMERGENCY, revoke_old_now=revoke, stalled=None)
            self.log.warning("rotation upgraded to emergency", revoke_old_now=revoke)

    def resume(self) -> None:
        """Clear a stall and give the deadline that passed a fresh period."""
        rot = self.rotation
        if rot.stalled is None:
            return
        now = self.clock()
        changes: dict[str, object] = {"stalled": None}
        if rot.stalled.reason == reasons.PICKUP_TIMEOUT:
            changes["pickup_deadline"] = now + self.policy.pickup_timeout_s
        elif rot.stalled.reason == reasons.DRAIN_TIMEOUT:
            key = "abort_deadline" if self.record.phase == reasons.ABORTING else "drain_deadline"
            changes[key] = now + self.policy.drain_timeout_s
        elif rot.stalled.reason == reasons.SECRET_CHANGED:
            changes.update(self._accept_secret())
        self.save_rotation(**changes)
        self.log.info("rotation resumed", after=rot.stalled.reason)

    def _accept_secret(self) -> dict[str, object]:
        """After "secret changed": go on only if the latest version still serves our key."""
        rot = self.rotation
        if self.record.phase != reasons.PUBLISHED:
            return {}
        current = self.kv.read(self.policy.secret_path)
        if current is None or current.data.get("key_id") != rot.new_key_id:
            raise EngineError(
                f"{self.policy.ref}: the consumer secret does not serve our new key "
                f"{rot.new_key_id}; run `vault-rotator abort {self.policy.ref}` or "
                f"`vault-rotator finish {self.policy.ref} --keep-old`"
            )
        return {"published_version": current.version}

    def abort(self) -> Progress | None:
        """Start rolling back; refused once the old key is gone."""
        rot = self.rotation
        ref = self.policy.ref
        if self.record.phase in (reasons.ABORTING, reasons.CLEANUP):
            return None  # already on its way back
        if rot.old_deleted or (rot.revoke_old_now and self.record.phase == reasons.PUBLISHED):
            raise EngineError(f"{ref}: abort refused: the old key is already deleted")
        if self.record.phase == reasons.INTENT:
            self.save_rotation(aborted_at=self.clock(), stalled=None, failure="aborted")
            self.session.save(self.record.evolve(phase=reasons.CLEANUP))
            return None
        if rot.old_key_id is None:
            raise EngineError(
                f"{ref}: abort refused: there is no known old key to go back to "
                f"(first run or unknown key); use `vault-rotator finish {ref} --keep-old`"
            )
        self.reenable_old()
        self.session.save(
            self.record.evolve(phase=reasons.ABORTING).with_rotation(
                aborted_at=self.clock(), stalled=None
            )
        )
        self.log.warning("rotation aborting: restoring the old secret", old_key_id=rot.old_key_id)
        return None

    def finish_keep_old(self) -> Progress:
        """End a published rotation now, keeping the old key alive (not deleted)."""
        rot = self.rotation
        if self.record.phase != reasons.PUBLISHED:
            raise EngineError(
                f"{self.policy.ref}: finish --keep-old needs a published rotation "
                f"(this one is {self.record.phase}); use `vault-rotator abort {self.policy.ref}`"
            )
        self.reenable_old()
        obs = self.observe()
        names = self.attempt_names()
        for key in obs.keys.values():
            if key.name in names and key.id != rot.new_key_id:
                self.delete_key(key.id)  # strays: keys this rotation created but never served
        detail = "ended by an operator; the old key was kept alive"
        if rot.old_key_id and not rot.old_deleted:
            detail += f" ({rot.old_key_id} still exists at the provider)"
        outcome = self.outcome(reasons.FINISHED_KEEP_OLD, new_key_id=rot.new_key_id, detail=detail)
        return self.finish(outcome, current_key_id=rot.new_key_id)
