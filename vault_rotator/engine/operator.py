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
        """After "secret changed": go on only if the latest version still serves the key the
        rotation expects there (the new key; during an abort, once restored, the old one)."""
        rot = self.rotation
        phase = self.record.phase
        if phase not in (reasons.PUBLISHED, reasons.ABORTING):
            return {}
        restored = phase == reasons.ABORTING and rot.republished_version is not None
        expected = rot.old_key_id if restored else rot.new_key_id
        current = self.kv.read(self.policy.secret_path)
        if current is None or current.data.get("key_id") != expected:
            raise EngineError(
                f"{self.policy.ref}: the consumer secret does not serve {expected}; someone "
                f"else owns it now: run `vault-rotator finish {self.policy.ref} --keep-old` "
                "or restore it by hand"
            )
        key = "republished_version" if restored else "published_version"
        return {key: current.version}

    def settle_old_delete(self) -> None:
        """A delete of the old key was recorded but not its result: find out by listing."""
        rot = self.rotation
        write = self.record.provider_write
        if rot.old_deleted or not write or write.action != reasons.DELETE:
            return
        if write.target == rot.old_key_id and rot.old_key_id not in self.observe().keys:
            self.save_rotation(old_deleted=True)

    def abort(self) -> Progress | None:
        """Start rolling back; refused once the old key is gone."""
        ref = self.policy.ref
        if self.record.phase in (reasons.ABORTING, reasons.CLEANUP):
            return None  # already on its way back
        if self.record.phase == reasons.INTENT and not self._published_unrecorded():
            self.save_rotation(aborted_at=self.clock(), stalled=None, failure="aborted")
            self.session.save(self.record.evolve(phase=reasons.CLEANUP))
            return None
        self.settle_old_delete()
        rot = self.rotation
        if rot.old_deleted or rot.revoke_old_now:
            raise EngineError(f"{ref}: abort refused: the old key is already deleted")
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

    def _published_unrecorded(self) -> bool:
        """In INTENT: had a crashed pass already published? Then record it (now PUBLISHED)."""
        pending, _ = self.store.read_pending(self.policy.env, self.policy.name)
        if pending is None or pending.rotation_id != self.rotation.id:
            return False
        return self.recover_publish(pending) is not None

    def finish_keep_old(self) -> Progress:
        """End a published rotation now, keeping the old key alive (not deleted)."""
        phase = self.record.phase
        if phase == reasons.INTENT:
            self._published_unrecorded()
        serving_new = phase == reasons.ABORTING and self.rotation.republished_version is None
        if self.record.phase != reasons.PUBLISHED and not serving_new:
            raise EngineError(
                f"{self.policy.ref}: finish --keep-old needs a published rotation whose new "
                f"key is served (this one is {self.record.phase}); use "
                f"`vault-rotator abort {self.policy.ref}`"
            )
        self.settle_old_delete()
        rot = self.rotation
        self.reenable_old()
        obs = self.observe()
        names = self.attempt_names()
        for key in obs.keys.values():
            if key.name in names and key.id != rot.new_key_id:
                self.delete_key(key.id)  # strays: keys this rotation created but never served
        detail = "ended by an operator"
        if rot.old_key_id and not rot.old_deleted:
            detail += f"; the old key was kept alive ({rot.old_key_id} still exists)"
        elif rot.old_key_id:
            detail += "; the old key had already been deleted"
        outcome = self.outcome(reasons.FINISHED_KEEP_OLD, new_key_id=rot.new_key_id, detail=detail)
        return self.finish(outcome, current_key_id=rot.new_key_id)
