"""The INTENT phase's effects: create and verify (the value and the verify saved together),
baseline, publish.

What to do next is decided by :func:`.decide_create.decide_creation`; each function here applies
one of its actions. A new key the provider lists *unreadable* at the baseline fails the
rotation before publishing (the new key is deleted, the old one stays served), never a new
create.

Writes: "about to create" (with the intent, and a lease handed off at the pending record:
:class:`~.state.Lease`), the pending record (the value and when its verify passed), and at
publish the lease taken again, the consumer secret, its labels and "published" with the lease
given back. The baseline comes from the caller's list pass when it is recent enough.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import assert_never

from vault_rotator.display import shown
from vault_rotator.engine import reasons
from vault_rotator.engine.context import Carry, Pass, Progress
from vault_rotator.engine.decide import Decision, mark_of
from vault_rotator.engine.decide_create import CreateAction, CreationFacts, Listing
from vault_rotator.engine.effects import delete_key, find_version, stall
from vault_rotator.engine.state import Pending, Rotation, UseMark
from vault_rotator.errors import (
    AmbiguousCreateError,
    CasConflictError,
    ProviderError,
    ProviderPermanentError,
    RateLimitedError,
    StoreError,
    VaultRotatorError,
)
from vault_rotator.ports.kv import Versioned
from vault_rotator.ports.provider import Dialect, KeySpec
from vault_rotator.secret import Secret, fingerprint


def observe_creation(p: Pass, carry: Carry) -> CreationFacts:
    """This attempt's pending record (read once a pass), and, once it exists, whether a crashed
    pass already published it; the rest comes from the record, the clock and the carry."""
    rot = p.rotation
    if carry.pending_version is None:
        seen = p.session.pending_seen  # read while opening, to see the lease handed off
        pending, carry.pending_version = seen or p.store.read_pending(p.policy.env, p.policy.name)
        ours = pending and (pending.rotation_id, pending.attempt) == (rot.id, rot.attempt)
        carry.pending = pending if ours else None
    published = False
    if carry.pending is not None:
        rot = with_saved_verify(rot, carry.pending)
        if not carry.published_checked and not p.trusted:  # trusted: no crash to catch up on
            carry.published_checked = True
            published = secret_holds_publish(p, carry)
    lag = p.policy.provider.usage_lag_s
    if carry.listing is None and _late_enough(p.shared, rot.verified_at, lag):
        carry.listing = p.shared  # the caller's list pass, asked for late enough: the baseline
    return CreationFacts(
        rotation=rot,
        now=p.clock(),
        usage_lag=p.policy.provider.usage_lag_s,
        poll_interval=p.policy.provider.poll_interval_s,
        pending=carry.pending,
        write=p.record.provider_write,
        attempt_name=p.key_name(rot.attempt),
        published=published,
        verify_failure=carry.verify_failure,
        rate_limited=carry.rate_limited,
        listing=carry.listing,
        dialect_a=p.provider.detected_dialect is Dialect.A,
    )


def _late_enough(shared: Listing | None, verified_at: float | None, lag: float) -> bool:
    """Was the caller's list pass asked for ``lag`` or more after the verify?"""
    return shared is not None and verified_at is not None and shared.asked_at >= verified_at + lag


def apply_creation(  # noqa: PLR0911 (one return per action)
    p: Pass, decision: Decision[CreateAction], carry: Carry
) -> Progress | None:
    match decision.action:
        case CreateAction.NEW_ATTEMPT:  # written with the next "about to create"
            p.stage(p.record.with_rotation(attempt=p.rotation.attempt + 1))
            return None
        case CreateAction.CREATE:
            create(p, carry)
            return None
        case CreateAction.RETRY_LATER:
            assert carry.rate_limited is not None
            raise carry.rate_limited  # transient: the driver and the daemon try again
        case CreateAction.STALL:
            return stall(p, decision.reason, decision.detail)
        case CreateAction.RECOVER_PUBLISH:
            assert carry.pending is not None
            return record_found_publish(p, carry.pending)
        case CreateAction.VERIFY:
            assert carry.pending is not None
            carry.verify_failure = verify(p, carry.pending)
            return None
        case CreateAction.WAIT:
            return p.progress(decision.reason)
        case CreateAction.TAKE_BASELINE:
            verified_at = p.rotation.verified_at or 0.0
            carry.listing = p.routine_listing(verified_at + p.policy.provider.usage_lag_s)
            return None
        case CreateAction.PUBLISH:
            assert carry.pending is not None
            assert decision.mark is not None
            return publish(p, carry.pending, decision.mark, current=carry.secret_read)
        case CreateAction.FAIL:
            fail(p, decision.reason)
            carry.obs = None  # the clean-up lists the account afresh
            return None
        case _:
            assert_never(decision.action)


def fail(p: Pass, why: str) -> None:
    """Before publishing: INTENT -> CLEANUP; the old key stays served."""
    p.log.error("rotation failed before publishing; cleaning up", reason=why)
    p.save(p.record.begin_cleanup(why))


def create(p: Pass, carry: Carry) -> None:
    """Create this attempt's key, fenced; verify it; save its value and the verify to pending.

    A create whose answer was lost raises the attempt (the next create gets a new name). One
    refused outright (4xx, 429) or never sent created nothing: its name stays free. The verify
    is one call made before the value is saved (a crash in between loses the value: the next
    attempt gets a new name and the sweep deletes this key by its name). Once the value is
    saved with a passed verify, the lease is handed off: this pass's turn ends with that write.
    """
    rot = p.rotation
    name = p.key_name(rot.attempt)
    spec = KeySpec(name, rot.permissions)
    budget = p.provider.worst_case_seconds()
    p.session.before_provider_write(reasons.CREATE, name, budget, hand_off_at=rot.attempt)
    if rot.attempt == 1:
        p.fault("intent")  # the intent is saved with its first "about to create"
        p.session.ensure(budget)  # a pause at that boundary: the lease must still be ours
    try:
        created = p.provider.create_key(spec)
    except AmbiguousCreateError as exc:
        p.log.warning("create answer lost; will create again", name=shown(name), error=str(exc))
        p.save_rotation(attempt=rot.attempt + 1)
        return
    except ProviderError as exc:
        p.save(p.record.evolve(provider_write=None))
        if not isinstance(exc, RateLimitedError):
            raise
        carry.rate_limited = exc
        return
    p.log.info("new key created", key_id=created.record.id, name=shown(name))
    p.fault("create")
    assert carry.pending_version is not None
    try:
        carry.verify_failure = check_key(p, created.record.id, created.value)
    except ProviderError:  # not known to work yet: saved unverified, verified on a later pass
        _save_pending(p, carry, created.record.id, name, created.value, verified_at=None)
        raise
    verified_at = None if carry.verify_failure else p.clock()
    _save_pending(p, carry, created.record.id, name, created.value, verified_at=verified_at)
    if verified_at is not None:
        p.session.handed_off()


def _save_pending(
    p: Pass, carry: Carry, key_id: str, name: str, value: Secret, *, verified_at: float | None
) -> None:
    rot = p.rotation
    start = carry.secret_read  # the preflight's read, when it was this very version
    if rot.start_version and (start is None or start.version != rot.start_version):
        start = p.kv.read(p.policy.secret_path, rot.start_version)
    pending = Pending(
        rotation_id=rot.id,
        attempt=rot.attempt,
        new_key_id=key_id,
        new_key_name=name,
        new_key_value=value.reveal(),
        old_secret=dict(start.data) if start and rot.start_version and not start.deleted else None,
        old_version=rot.start_version,
        verified_at=verified_at,
    )
    assert carry.pending_version is not None
    try:
        p.session.hold()
        p.store.write_pending(p.policy.env, p.policy.name, pending, cas=carry.pending_version)
    except StoreError as exc:
        p.log.warning("could not save the new key; deleting it", key_id=key_id, error=str(exc))
        _delete_unsaved(p, key_id)
        raise
    carry.pending, carry.pending_version = pending, carry.pending_version + 1
    p.fault("pending")


def _delete_unsaved(p: Pass, key_id: str) -> None:
    """Delete a key whose value could not be saved; the sweep retries if this fails too."""
    try:
        delete_key(p, key_id)
    except VaultRotatorError as exc:  # Vault, provider, or a lost lease: the sweep retries
        p.log.warning("left for the sweep", key_id=key_id, error=str(exc))


def check_key(p: Pass, key_id: str, value: Secret) -> str | None:
    """The new key calls the provider once; why it failed for good, or None.

    A transient failure raises (nothing is judged: it is tried again on a later pass).
    """
    try:
        p.provider.verify_key(value)
    except ProviderPermanentError as exc:
        return f"the new key {key_id} failed verification: {exc}"
    p.log.info("new key verified", key_id=key_id)
    p.fault("verify")
    return None


def verify(p: Pass, pending: Pending) -> str | None:
    """A saved value not verified yet (a transient failure, or a record of schema 1): verify
    it now, under the lease; why it failed, or None (the verify is staged on the record)."""
    p.session.hold()
    failure = check_key(p, pending.new_key_id, Secret(pending.new_key_value))
    if failure is None:
        verified = p.record.with_rotation(verified_at=p.clock(), verified_attempt=pending.attempt)
        p.stage(verified)
    return failure


def with_saved_verify(rot: Rotation, pending: Pending) -> Rotation:
    """The rotation with the verify saved in this attempt's pending record, if it has one."""
    if pending.verified_at is None or rot.verified_attempt == pending.attempt:
        return rot
    return rot.evolve(verified_at=pending.verified_at, verified_attempt=pending.attempt)


def secret_holds_publish(p: Pass, carry: Carry) -> bool:
    """Did a pass that died write the consumer secret for this rotation without saying so?

    The secret as read is kept for the publish (one read serves both).
    """
    rot = p.rotation
    carry.secret_read = current = p.kv.read(p.policy.secret_path)
    if (current.version if current else 0) == rot.start_version:
        return False
    return find_version(p, rot.start_version, aborted=False) is not None


def record_found_publish(p: Pass, pending: Pending) -> Progress:
    """Catch up on a publish a crashed pass made: the key is served, so never unpublished.

    Its baseline is taken now: use since publish only delays the pickup.
    """
    new = p.observe().keys.get(pending.new_key_id)
    p.log.warning("found the new key already published; recording it")
    return publish(p, pending, mark_of(new) if new else UseMark())


def recover_publish(p: Pass, pending: Pending) -> Progress | None:
    """The operator's check in INTENT: record a publish a crashed pass made, if it did."""
    return record_found_publish(p, pending) if secret_holds_publish(p, Carry()) else None


def publish(
    p: Pass, pending: Pending, baseline: UseMark, *, current: Versioned | None = None
) -> Progress:
    """Consumer secret by CAS, then INTENT -> PUBLISHED (saved with the lease given back);
    someone else's write stalls it. ``current``: the secret as read in this pass."""
    rot = p.rotation
    p.session.hold()  # the consumer write is made under the lease
    version = _write_consumer(p, pending, current)
    if version is None:
        detail = "the consumer secret was written by someone else"
        return stall(p, reasons.SECRET_CHANGED, detail)
    p.fault("publish")
    _label(p, pending, version)
    now = p.clock()
    published = p.record.publish(
        new_key_id=pending.new_key_id,
        new_key_name=pending.new_key_name,
        new_key_fp=fingerprint(pending.new_key_value),
        published_version=version,
        published_at=now,
        pickup_deadline=now + p.policy.pickup_timeout_s,
        baseline=baseline,
    )
    p.session.save_and_release(published)
    p.log.info("new key published", key_id=pending.new_key_id, version=version, rotation_id=rot.id)
    p.fault("published")
    if rot.revoke_old_now and rot.old_key_id:
        p.log.warning(
            "revoke-old-now: deleting the old key right after publish; consumers that have "
            "not switched yet WILL FAIL",
            old_key_id=rot.old_key_id,
        )
    return p.progress("waiting for consumers to use the new key")


def _write_consumer(p: Pass, pending: Pending, current: Versioned | None) -> int | None:
    """Publish by CAS; the version holding our rotation_id, or None if someone else wrote.

    The secret is merged with what it held at the start: as read in this pass, else as saved
    in pending (the start version's whole data map; the CAS makes sure it is still that one).
    """
    rot = p.rotation
    path = p.policy.secret_path
    if current is None and pending.old_version == rot.start_version:
        base = dict(pending.old_secret or {})
    else:
        if current is None or current.version != rot.start_version:
            current = p.kv.read(path)
        if (current.version if current else 0) != rot.start_version:
            return find_version(p, rot.start_version, aborted=False)
        base = dict(current.data) if current and not current.deleted else {}
    base.pop("aborted", None)  # left by an earlier abort's republish: this is no abort
    data = base | {
        "api_key": pending.new_key_value,
        "key_id": pending.new_key_id,
        "key_name": pending.new_key_name,
        "rotated_at": datetime.fromtimestamp(p.clock(), UTC).isoformat(),
        "rotation_id": rot.id,
    }
    try:
        return p.kv.write(path, data, cas=rot.start_version)
    except CasConflictError:
        return find_version(p, rot.start_version, aborted=False)


def _label(p: Pass, pending: Pending, version: int) -> None:
    labels = {
        "managed-by": "vault-rotator",
        "key_id": pending.new_key_id,
        "rotation_id": pending.rotation_id,
        "version": str(version),
    }
    p.session.hold()
    try:
        p.kv.set_custom_metadata(p.policy.secret_path, labels)
    except StoreError as exc:  # labels are for humans; the state record is the truth
        p.log.warning("could not label the consumer secret", error=str(exc))
