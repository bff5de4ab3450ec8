"""Pure decisions of how a rotation ends: the clean-up of an unpublished rotation, and which
outcome each ending records (what the outcome then means: :mod:`.outcomes`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vault_rotator.engine.decide import Decision, Observation
from vault_rotator.engine.reasons import EMERGENCY, SECRET_CHANGED, OutcomeName
from vault_rotator.engine.state import Rotation


@dataclass(frozen=True, slots=True)
class Ending:
    """The outcome a finished rotation records, and why."""

    outcome: OutcomeName
    detail: str = ""


def success_ending(rotation: Rotation) -> Ending:
    """A published rotation done (the old key deleted, or none to delete)."""
    if rotation.old_missing:
        detail = "the old key had been deleted outside vault-rotator"
        return Ending(OutcomeName.SUCCEEDED_ATTENTION, detail)
    if rotation.old_key_id is None and rotation.start_version:
        return Ending(
            OutcomeName.SUCCEEDED_OLD_UNKNOWN, "the old key is unknown: it was not deleted"
        )
    if rotation.revoke_old_now and rotation.old_key_id:
        detail = "the old key was revoked right after publish"
        return Ending(OutcomeName.SUCCEEDED_REVOKED, detail)
    if rotation.mode == EMERGENCY and rotation.old_key_id:
        return Ending(OutcomeName.SUCCEEDED_EMERGENCY, "emergency: no drain")
    return Ending(OutcomeName.SUCCEEDED)


def unpublished_ending(rotation: Rotation) -> Ending:
    """A rotation that ends before publishing: aborted by an operator, or failed."""
    name = OutcomeName.ABORTED if rotation.aborted_at is not None else OutcomeName.FAILED_VERIFY
    return Ending(name, rotation.failure or "")


ABORT_ENDING = Ending(OutcomeName.ABORTED, "the old secret was restored")


def keep_old_ending(rotation: Rotation) -> Ending:
    """``finish --keep-old``: the new key stays served, the old one alive (if it still is)."""
    detail = "ended by an operator"
    if rotation.old_key_id and not rotation.old_deleted:
        detail += f"; the old key was kept alive ({rotation.old_key_id} still exists)"
    elif rotation.old_key_id:
        detail += "; the old key had already been deleted"
    return Ending(OutcomeName.FINISHED_KEEP_OLD, detail)


class CleanupAction(enum.StrEnum):
    """What a rotation ending unpublished does next."""

    DELETE_KEYS = "delete-keys"  # every key of this rotation, confirmed gone
    FINISH = "finish"  # none left: the outcome is unpublished_ending's
    STALL = "stall"  # the consumer secret serves one of them: never deleted


@dataclass(frozen=True, slots=True)
class CleanupFacts:
    rotation: Rotation
    obs: Observation
    names: frozenset[str]  # the names of every attempt's key
    created: str  # the id the last create answered ("" if none): ours even if renamed
    served: str | None = None  # the key_id the consumer secret serves now


def decide_cleanup(facts: CleanupFacts) -> Decision[CleanupAction]:
    """Delete this rotation's keys (by name, and by the id the create answered), then finish."""
    ours = sorted(
        k.id for k in facts.obs.keys.values() if k.name in facts.names or k.id == facts.created
    )
    if facts.served is not None and facts.served in ours:  # a publish no record caught
        detail = (
            f"the consumer secret serves {facts.served}, a key of this rotation: it is not "
            "deleted; restore the secret, or rotate again once it is settled"
        )
        return Decision(CleanupAction.STALL, facts.rotation, SECRET_CHANGED, detail)
    if ours:
        why = "removing the keys of a rotation that ends unpublished"
        return Decision(CleanupAction.DELETE_KEYS, facts.rotation, why, sweep_ids=tuple(ours))
    return Decision(CleanupAction.FINISH, facts.rotation, "nothing of this rotation is left")
