"""Pure decisions of an idle record and of the creation phase (INTENT), up to the publish.

A pass in INTENT goes round the machine's loop several times: each turn gathers
:class:`CreationFacts` (the pending record, the provider write recorded last, the verify, the
clock, the baseline's list pass once it is due) and :func:`decide_creation` names one action.
Nothing here does I/O.

* A create whose answer may have been lost (a create of this attempt's name is recorded and no
  value was saved) is never retried under the same name: the attempt goes up.
* A consumer secret already holding this rotation's publish (a pass died after writing it) is
  recorded as published, never cleaned up.
* The baseline is the new key's reported use ``usage_lag`` after our own verify call; where the
  provider shows ``last_used_at`` (dialects B, C) and it shows none yet, one more ``usage_lag``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Decision, Observation, mark_of
from vault_rotator.engine.state import Pending, ProviderWrite, Rotation
from vault_rotator.errors import RateLimitedError
from vault_rotator.ports.provider import KeyRecord, Permissions

MAX_CREATE_ATTEMPTS = 5
WAITING_USAGE_LAG = "waiting usage_lag after verifying the new key"


class IdleAction(enum.StrEnum):
    """What a pass over an idle record does."""

    REST = "rest"  # nothing in flight, nothing asked
    DROP_STALE_PENDING = "drop-stale-pending"  # a pending record no rotation owns
    START = "start"  # preflight, then the intent is saved (IDLE -> INTENT)


class CreateAction(enum.StrEnum):
    """What a pass in INTENT does next."""

    NEW_ATTEMPT = "new-attempt"  # a create may have been lost: the next one gets a new name
    CREATE = "create"  # "about to create" saved, create, the value saved to pending at once
    RETRY_LATER = "retry-later"  # a 429 a poll interval covers: a transient failure, raised
    STALL = "stall"  # a 429 asking to wait longer than a poll interval (nothing created)
    RECOVER_PUBLISH = "recover-publish"  # a crashed pass published and did not save it
    VERIFY = "verify"  # the new key calls GET /v1/models once
    WAIT = "wait"  # usage_lag after the verify is not over (a state, not a sleep)
    TAKE_BASELINE = "take-baseline"  # list the account: the new key's use is the baseline
    PUBLISH = "publish"  # consumer secret by CAS (INTENT -> PUBLISHED)
    FAIL = "fail"  # ends unpublished: its keys deleted, the old key stays served (-> CLEANUP)


@dataclass(frozen=True, slots=True)
class IdleFacts:
    stale_pending: bool  # a pending record exists though no rotation is in flight
    start: bool  # the caller asked to start a rotation


def decide_idle(facts: IdleFacts) -> Decision[IdleAction]:
    """An idle record: tidy a stale pending record, then start if asked."""
    if facts.stale_pending:
        return Decision(IdleAction.DROP_STALE_PENDING, None, "destroying a stale pending record")
    if facts.start:
        return Decision(IdleAction.START, None, "starting a rotation")
    return Decision(IdleAction.REST, None)


@dataclass(frozen=True, slots=True)
class Listing:
    """The baseline's list pass, and the local time at which it was asked for."""

    obs: Observation
    asked_at: float


@dataclass(frozen=True, slots=True)
class CreationFacts:
    """What a turn in INTENT gathered before deciding."""

    rotation: Rotation
    now: float
    usage_lag: float
    poll_interval: float
    pending: Pending | None = None  # this attempt's pending record (its value saved)
    write: ProviderWrite | None = None  # the provider write recorded last
    attempt_name: str = ""  # this attempt's key name
    published: bool = False  # the consumer secret holds this rotation's (unrecorded) publish
    verify_failure: str | None = None  # the provider refused the new key in this pass
    rate_limited: RateLimitedError | None = None  # the create was refused with 429
    listing: Listing | None = None  # taken once usage_lag passed since the verify
    dialect_a: bool = False  # the provider shows no last_used_at (dialect A)


def decide_creation(facts: CreationFacts) -> Decision[CreateAction]:
    """The next step of a rotation that is not yet published."""
    rot = facts.rotation
    if facts.rate_limited is not None:
        return rate_limited(facts.rate_limited.retry_after, facts)
    if facts.pending is None:
        return decide_create(facts)
    if facts.published:
        return Decision(CreateAction.RECOVER_PUBLISH, rot, "found the new key already published")
    if facts.verify_failure is not None:
        return Decision(CreateAction.FAIL, rot, facts.verify_failure)
    if rot.verified_at is None or rot.verified_attempt != facts.pending.attempt:
        return Decision(CreateAction.VERIFY, rot, "verifying the new key")
    return decide_baseline(facts, facts.pending, rot.verified_at)


def decide_create(facts: CreationFacts) -> Decision[CreateAction]:
    """No value saved for this attempt yet: create, under a new name if one may be lost."""
    rot, write = facts.rotation, facts.write
    if write and write.action == reasons.CREATE and write.target == facts.attempt_name:
        return Decision(CreateAction.NEW_ATTEMPT, rot, "a create's answer may have been lost")
    if rot.attempt > MAX_CREATE_ATTEMPTS:
        why = f"{MAX_CREATE_ATTEMPTS} create attempts gave no usable key"
        return Decision(CreateAction.FAIL, rot, why)
    return Decision(CreateAction.CREATE, rot, f"creating attempt {rot.attempt}")


def rate_limited(wait: float | None, facts: CreationFacts) -> Decision[CreateAction]:
    """A create refused with 429 (nothing created): a later pass, or a stall past a poll.

    An emergency rotation never stalls for it: the key waits (a leak is no time to need one
    ``resume`` per key), and the provider's client holds every call until the wait is over."""
    rot = facts.rotation
    if wait is None or wait <= facts.poll_interval or rot.mode == reasons.EMERGENCY:
        return Decision(CreateAction.RETRY_LATER, rot, "rate-limited: the next pass tries again")
    until = datetime.fromtimestamp(facts.now + wait, UTC).isoformat(timespec="seconds")
    detail = (
        f"the provider refused the create with 429 and asks to wait {wait:g}s (until "
        f"{until}); nothing was created: resume after that"
    )
    return Decision(CreateAction.STALL, rot, reasons.RATE_LIMITED, detail)


def decide_baseline(
    facts: CreationFacts, pending: Pending, verified_at: float
) -> Decision[CreateAction]:
    """Once ``usage_lag`` has passed since our verify: the new key's listing is the baseline."""
    rot, lag = facts.rotation, facts.usage_lag
    if facts.now < verified_at + lag:
        return Decision(CreateAction.WAIT, rot, WAITING_USAGE_LAG)
    if facts.listing is None:
        return Decision(CreateAction.TAKE_BASELINE, rot, "listing the new key for its baseline")
    new = facts.listing.obs.keys.get(pending.new_key_id)
    if (problem := baseline_problem(pending.new_key_id, new, rot.permissions)) is not None:
        return Decision(CreateAction.FAIL, rot, problem)
    assert new is not None
    mark = mark_of(new)
    unseen = mark.last_used_at is None and not facts.dialect_a
    if unseen and facts.listing.asked_at < verified_at + 2 * lag:
        return Decision(CreateAction.WAIT, rot, WAITING_USAGE_LAG)  # our verify not shown yet
    return Decision(CreateAction.PUBLISH, rot, "publishing the new key", mark=mark)


def baseline_problem(key_id: str, new: KeyRecord | None, perms: Permissions) -> str | None:
    """Why the new key, as listed after usage_lag, must not be published; None: it may."""
    if new is None:
        return f"the new key {key_id} is not listed after usage_lag"
    if new.problem is not None:
        return f"the new key {key_id} is listed unreadable ({new.problem})"
    difference = perms.differs_from(new.permissions)
    return None if difference is None else f"the new key is {difference}"
