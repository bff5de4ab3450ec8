"""Steps 5-8 of a published rotation (pickup, drain, disable, delete, sweep, done), abort's
reverse path, and the clean-up of a rotation that ends before publishing.

Evidence of use comes only from records read whole: a key whose use is being judged (the new
key for pickup and, while aborting, for its drain; the old key for its drain) that a list pass
shows *unreadable* (``KeyRecord.problem``) is taken as not observed in that pass, the same as
decide treats a key missing from a pass: neither in use, nor quiet, nor gone. It still counts as
listed (a 404 for it is "delete unconfirmed"), its name still matches for the sweep, and if a
deadline passes meanwhile the stall's detail says the record was unreadable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import (
    Decision,
    Observation,
    decide_abort,
    decide_published,
)
from vault_rotator.engine.passes import PassBase, Progress
from vault_rotator.errors import CasConflictError, EngineError


class PublishedSteps(PassBase):
    """From a published new key to an idle record (or, aborting, back to the old key)."""

    def published(self, obs: Observation) -> Progress:
        rot = self.rotation
        write = self.record.provider_write
        redo = write and write.action == reasons.DELETE and write.target == rot.old_key_id
        if redo and not rot.old_deleted:
            return self._delete_old(obs)  # we may have deleted it already: a 404 is fine
        if (changed := self._secret_changed()) is not None:
            return self.stall(reasons.SECRET_CHANGED, changed)
        judged = (rot.old_key_id, rot.new_key_id)
        evidence, unreadable = self._readable(obs, judged)
        names = self.attempt_names()
        decision = decide_published(rot, evidence, self.timing(), names, now=self.clock())
        return self._apply(_noting(decision, unreadable), obs)

    def _readable(
        self, obs: Observation, judged: Sequence[str | None]
    ) -> tuple[Observation, dict[str, str]]:
        """``obs`` without the judged keys it lists unreadable, and those keys' problems."""
        unreadable = {
            key_id: record.problem
            for key_id in judged
            if key_id and (record := obs.keys.get(key_id)) and record.problem is not None
        }
        if not unreadable:
            return obs, unreadable
        for key_id, problem in unreadable.items():
            self.log.warning(
                "a key this rotation judges is listed unreadable; no evidence from it this pass",
                key_id=key_id,
                problem=problem,
            )
        kept = {key_id: k for key_id, k in obs.keys.items() if key_id not in unreadable}
        return Observation(kept, obs.at), unreadable

    def _secret_changed(self) -> str | None:
        """Why the consumer secret is no longer ours, or None (a later version = changed)."""
        rot = self.rotation
        current = self.kv.read(self.policy.secret_path)
        if current is None or current.version != rot.published_version:
            version = current.version if current else 0
            ours = rot.published_version
            return f"version {version} of the consumer secret was written after ours ({ours})"
        if current.data.get("key_id") != rot.new_key_id:
            return "the consumer secret no longer serves our key"
        return None

    def _apply(self, decision: Decision, obs: Observation) -> Progress:
        self.session.stage(self.record.evolve(rotation=decision.rotation))
        match decision.action:
            case "sweep":
                return self._sweep(decision.sweep_ids)
            case "stall":
                return self.stall(decision.reason, decision.detail)
            case "disable-old":
                return self._disable_old()
            case "delete-old":
                return self._delete_old(obs)
            case "finish":
                return self._done()
        return self.progress(decision.reason)

    def _sweep(self, key_ids: tuple[str, ...]) -> Progress:
        if (stalled := self._delete_all(key_ids)) is not None:
            return stalled
        self.e.fault("sweep")
        return self.progress("removing keys this rotation created but did not publish")

    def _delete_all(self, key_ids: Sequence[str]) -> Progress | None:
        """Delete keys; a 404 for a key a fresh list pass still shows is a stall."""
        gone_already = [key_id for key_id in key_ids if not self.delete_key(key_id)]
        if gone_already:
            listed = self.observe().keys
            if still := [key_id for key_id in gone_already if key_id in listed]:
                detail = f"the provider answered 404 for {', '.join(still)} yet still lists it"
                return self.stall(reasons.DELETE_UNCONFIRMED, detail)
        return None

    def _disable_old(self) -> Progress:
        rot = self.rotation
        assert rot.old_key_id is not None
        # Saved first: a crash right after the disable must still lead to a re-enable.
        self.save_rotation(old_disabled_at=self.clock())
        self.set_disabled(rot.old_key_id, disabled=True)
        self.e.fault("disable")
        return self.progress("old key disabled; deleting after disable_before_delete")

    def _delete_old(self, obs: Observation) -> Progress:
        rot = self.rotation
        assert rot.old_key_id is not None
        if (changed := self._secret_changed()) is not None:
            return self.stall(reasons.SECRET_CHANGED, changed)
        deleted = self.delete_key(rot.old_key_id)
        self.e.fault("delete")
        if not deleted and rot.old_key_id in self.observe().keys:
            return self.stall(
                reasons.DELETE_UNCONFIRMED,
                f"the provider answered 404 for {rot.old_key_id} yet still lists it",
            )
        self.session.stage(self.record.with_rotation(old_deleted=True))
        return self.published(obs)

    def _done(self) -> Progress:
        rot = self.rotation
        if rot.old_missing:
            name, detail = (
                reasons.SUCCEEDED_ATTENTION,
                "the old key had been deleted outside vault-rotator",
            )
        elif rot.old_key_id is None and rot.start_version:
            name, detail = (
                reasons.SUCCEEDED_OLD_UNKNOWN,
                "the old key is unknown: it was not deleted",
            )
        elif rot.revoke_old_now and rot.old_key_id:
            name, detail = reasons.SUCCEEDED_REVOKED, "the old key was revoked right after publish"
        elif rot.mode == reasons.EMERGENCY and rot.old_key_id:
            name, detail = reasons.SUCCEEDED_EMERGENCY, "emergency: no drain"
        else:
            name, detail = reasons.SUCCEEDED, ""
        outcome = self.outcome(name, new_key_id=rot.new_key_id, detail=detail)
        return self.finish(outcome, current_key_id=rot.new_key_id)

    # -- abort: the rotation in reverse ---------------------------------------------------

    def aborting(self, obs: Observation) -> Progress:
        rot = self.rotation
        write = self.record.provider_write
        redo = write and write.action == reasons.DELETE and write.target == rot.new_key_id
        if redo and not rot.new_deleted:
            self.delete_key(rot.new_key_id or "")
            self.session.stage(self.record.with_rotation(new_deleted=True))
        names = self.attempt_names()
        rot = self.rotation
        judged = () if rot.new_deleted else (rot.new_key_id,)
        evidence, unreadable = self._readable(obs, judged)
        decision = decide_abort(rot, evidence, self.timing(), names, now=self.clock())
        decision = _noting(decision, unreadable)
        self.session.stage(self.record.evolve(rotation=decision.rotation))
        match decision.action:
            case "republish":
                return self._republish()
            case "delete-new":
                return self._delete_new()
            case "sweep":
                return self._sweep(decision.sweep_ids)
            case "stall":
                return self.stall(decision.reason, decision.detail)
            case "finish":
                outcome = self.outcome(
                    reasons.ABORTED, new_key_id=None, detail="the old secret was restored"
                )
                return self.finish(outcome, current_key_id=rot.old_key_id)
        return self.progress(decision.reason)

    def _delete_new(self) -> Progress:
        rot = self.rotation
        current = self.kv.read(self.policy.secret_path)
        if current is None or current.version != rot.republished_version:
            detail = "the consumer secret was written after the abort restored it"
            return self.stall(reasons.SECRET_CHANGED, detail)
        self.delete_key(rot.new_key_id or "")
        self.e.fault("delete")
        self.session.stage(self.record.with_rotation(new_deleted=True))
        return self.progress("aborting: new key deleted; confirming")

    def _republish(self) -> Progress:
        """Write the old secret's whole data map back, marked as our abort, by CAS."""
        rot = self.rotation
        pending, _ = self.store.read_pending(self.policy.env, self.policy.name)
        if pending is None or pending.rotation_id != rot.id or pending.old_secret is None:
            raise EngineError(f"{self.policy.ref}: the old secret is not in pending; cannot abort")
        self.reenable_old()
        path = self.policy.secret_path
        data = dict(pending.old_secret) | {
            "rotation_id": rot.id,
            "aborted": True,
            "rotated_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
        }
        current = self.kv.current_version(path)
        version = self.find_version(rot.published_version or 0, aborted=True)
        if version is None and current == rot.published_version:
            try:
                version = self.kv.write(path, data, cas=current)
            except CasConflictError:
                version = self.find_version(rot.published_version or 0, aborted=True)
        if version is None:
            return self.stall(
                reasons.SECRET_CHANGED, "the consumer secret changed; abort cannot restore it"
            )
        self.e.fault("publish")
        self.save_rotation(
            republished_version=version, abort_deadline=self.clock() + self.policy.drain_timeout_s
        )
        self.log.info("old secret republished", version=version, old_key_id=rot.old_key_id)
        return self.progress("aborting: waiting for the new key to go quiet")

    # -- before publish: remove what this rotation created --------------------------------

    def cleanup(self, obs: Observation) -> Progress:
        names = self.attempt_names()
        pending, _ = self.store.read_pending(self.policy.env, self.policy.name)
        created = pending.new_key_id if pending and pending.rotation_id == self.rotation.id else ""
        # By name, and by the id the create answered (a key listed with an unreadable or
        # changed name is still ours to delete).
        ours = sorted(k.id for k in obs.keys.values() if k.name in names or k.id == created)
        if ours:
            if (stalled := self._delete_all(ours)) is not None:
                return stalled
            return self.progress("removing the keys of a rotation that ends unpublished")
        rot = self.rotation
        name = reasons.ABORTED if rot.aborted_at is not None else reasons.FAILED_VERIFY
        outcome = self.outcome(name, new_key_id=None, detail=rot.failure or "")
        return self.finish(outcome, current_key_id=self.record.current_key_id)


def _noting(decision: Decision, unreadable: Mapping[str, str]) -> Decision:
    """A stall decided while judged keys were unreadable says so in its detail."""
    if decision.action != "stall" or not unreadable:
        return decision
    notes = "; ".join(
        f"{key_id} is listed unreadable ({why})" for key_id, why in unreadable.items()
    )
    return replace(decision, detail=f"{decision.detail}; note: {notes}")
