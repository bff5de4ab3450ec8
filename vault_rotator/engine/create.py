"""The INTENT phase's effects: create (the value saved at once), verify, baseline, publish.

What to do next is decided by :func:`.decide_create.decide_creation`; each function here applies
one of its actions. A new key the provider lists *unreadable* at the baseline fails the
rotation before publishing (the new key is deleted, the old one stays served), never a new
create.
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
from vault_rotator.engine.state import Pending, UseMark
from vault_rotator.errors import (
    AmbiguousCreateError,
    CasConflictError,
    ProviderError,
    ProviderPermanentError,
    RateLimitedError,
    StoreError,
    VaultRotatorError,
)
from vault_rotator.ports.provider import Dialect, KeySpec
from vault_rotator.secret import Secret, fingerprint


def observe_creation(p: Pass, carry: Carry) -> CreationFacts:
    """This attempt's pending record (read once a pass), and, once it exists, whether a crashed
    pass already published it; the rest comes from the record, the clock and the carry."""
    rot = p.rotation
    if carry.pending_version is None:
        pending, carry.pending_version = p.store.read_pending(p.policy.env, p.policy.name)
        ours = pending and (pending.rotation_id, pending.attempt) == (rot.id, rot.attempt)
        carry.pending = pending if ours else None
    published = False
    if carry.pending is not None and not carry.published_checked:
        carry.published_checked = True
        published = secret_holds_publish(p)
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


def apply_creation(  # noqa: PLR0911 (one return per action)
    p: Pass, decision: Decision[CreateAction], carry: Carry
) -> Progress | None:
    match decision.action:
        case CreateAction.NEW_ATTEMPT:
            p.save_rotation(attempt=p.rotation.attempt + 1)
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
            asked_at = p.clock()
            carry.listing = Listing(p.observe(), asked_at)
            return None
        case CreateAction.PUBLISH:
            assert carry.pending is not None
            assert decision.mark is not None
            return publish(p, carry.pending, decision.mark)
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
    """Create this attempt's key, fenced, and save its value to pending at once.

    A create whose answer was lost raises the attempt (the next create gets a new name). One
    refused outright (4xx, 429) or never sent created nothing: its name stays free.
    """
    rot = p.rotation
    name = p.key_name(rot.attempt)
    spec = KeySpec(name, rot.permissions)
    p.session.before_provider_write(reasons.CREATE, name, p.provider.worst_case_seconds())
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
    carry.pending = _save_pending(p, created.record.id, name, created.value, carry.pending_version)


def _save_pending(p: Pass, key_id: str, name: str, value: Secret, version: int) -> Pending:
    rot = p.rotation
    start = p.kv.read(p.policy.secret_path, rot.start_version) if rot.start_version else None
    pending = Pending(
        rotation_id=rot.id,
        attempt=rot.attempt,
        new_key_id=key_id,
        new_key_name=name,
        new_key_value=value.reveal(),
        old_secret=dict(start.data) if start and not start.deleted else None,
        old_version=rot.start_version,
    )
    p.session.check_fence()  # paused past our lease: the new holder sweeps the new key
    try:
        p.store.write_pending(p.policy.env, p.policy.name, pending, cas=version)
    except StoreError as exc:
        p.log.warning("could not save the new key; deleting it", key_id=key_id, error=str(exc))
        _delete_unsaved(p, key_id)
        raise
    p.fault("pending")
    return pending


def _delete_unsaved(p: Pass, key_id: str) -> None:
    """Delete a key whose value could not be saved; the sweep retries if this fails too."""
    try:
        delete_key(p, key_id)
    except VaultRotatorError as exc:  # Vault, provider, or a lost lease: the sweep retries
        p.log.warning("left for the sweep", key_id=key_id, error=str(exc))


def verify(p: Pass, pending: Pending) -> str | None:
    """The new key calls the provider once; why it failed, or None (the verify is staged)."""
    try:
        p.provider.verify_key(Secret(pending.new_key_value))
    except ProviderPermanentError as exc:
        return f"the new key {pending.new_key_id} failed verification: {exc}"
    p.log.info("new key verified", key_id=pending.new_key_id)
    p.fault("verify")
    verified = p.record.with_rotation(verified_at=p.clock(), verified_attempt=pending.attempt)
    p.stage(verified)
    return None


def secret_holds_publish(p: Pass) -> bool:
    """Did a pass that died write the consumer secret for this rotation without saying so?"""
    rot = p.rotation
    if p.kv.current_version(p.policy.secret_path) == rot.start_version:
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
    return record_found_publish(p, pending) if secret_holds_publish(p) else None


def publish(p: Pass, pending: Pending, baseline: UseMark) -> Progress:
    """Consumer secret by CAS, then INTENT -> PUBLISHED; someone else's write stalls it."""
    rot = p.rotation
    version = _write_consumer(p, pending)
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
    p.save(published)
    p.log.info("new key published", key_id=pending.new_key_id, version=version, rotation_id=rot.id)
    p.fault("published")
    if rot.revoke_old_now and rot.old_key_id:
        p.log.warning(
            "revoke-old-now: deleting the old key right after publish; consumers that have "
            "not switched yet WILL FAIL",
            old_key_id=rot.old_key_id,
        )
    return p.progress("waiting for consumers to use the new key")


def _write_consumer(p: Pass, pending: Pending) -> int | None:
    """Publish by CAS; the version holding our rotation_id, or None if someone else wrote."""
    rot = p.rotation
    path = p.policy.secret_path
    current = p.kv.read(path)
    if (current.version if current else 0) == rot.start_version:
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
            p.session.check_fence()
            return p.kv.write(path, data, cas=rot.start_version)
        except CasConflictError:
            pass
    return find_version(p, rot.start_version, aborted=False)


def _label(p: Pass, pending: Pending, version: int) -> None:
    labels = {
        "managed-by": "vault-rotator",
        "key_id": pending.new_key_id,
        "rotation_id": pending.rotation_id,
        "version": str(version),
    }
    p.session.check_fence()
    try:
        p.kv.set_custom_metadata(p.policy.secret_path, labels)
    except StoreError as exc:  # labels are for humans; the state record is the truth
        p.log.warning("could not label the consumer secret", error=str(exc))
