"""Steps 0-4: preflight and intent, create (value saved at once), verify, baseline, publish.

A key the rotation depends on that the provider lists *unreadable* (``KeyRecord.problem``) is
never taken as absent: an unreadable old key refuses the rotation before any side effect (its
permissions and use cannot be judged); an unreadable new key at the baseline fails the rotation
before publishing (the new key is deleted, the old one stays served), never a new create.
"""

from __future__ import annotations

from datetime import UTC, datetime

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import mark_of
from vault_rotator.engine.passes import PassBase, Progress
from vault_rotator.engine.preflight import Plan, preflight
from vault_rotator.engine.state import Pending, Rotation, UseMark
from vault_rotator.errors import (
    AmbiguousCreateError,
    CasConflictError,
    PreflightError,
    ProviderError,
    ProviderPermanentError,
    RateLimitedError,
    StoreError,
    VaultRotatorError,
)
from vault_rotator.logs import shown
from vault_rotator.ports.provider import Dialect, KeyRecord, KeySpec
from vault_rotator.secret import Secret, fingerprint

MAX_CREATE_ATTEMPTS = 5


class ForwardSteps(PassBase):
    """From an idle record to a published new key."""

    # -- steps 0-1: preflight and intent --------------------------------------------------

    def intent(self, *, trigger: str, by: str, emergency: bool, revoke_old_now: bool) -> None:
        plan = preflight(
            self.policy, self.kv, self.store, self.provider, now=self.clock(),
            capabilities_checked=True,
        )  # fmt: skip
        old_id, missing = self._settle_old_key(plan)
        if emergency and plan.old.unknown:
            raise PreflightError(
                f"{self.policy.ref}: emergency rotation refused: the old key is unknown (the "
                "secret has no key_id); set adopt_key_id in the policy so it can be deleted"
            )
        now = self.clock()
        old = plan.old_key if plan.old_key and plan.old_key.id == old_id else None
        rotation = Rotation(
            id=self.e.new_id(),
            attempt=1,
            date=datetime.fromtimestamp(now, UTC).date().isoformat(),
            policy=self.policy.to_dict(),
            permissions=plan.permissions,
            started_at=now,
            start_version=plan.start_version,
            mode=reasons.EMERGENCY if emergency else reasons.NORMAL,
            revoke_old_now=emergency and revoke_old_now,
            trigger=trigger,
            by=by,
            old_key_id=old_id,
            old_key_name=old.name if old else None,
            old_missing=missing,
        )
        record = self.record.evolve(
            phase=reasons.INTENT,
            rotation=rotation,
            dialect=plan.dialect or self.record.dialect,
            provider_write=None,
        )
        self.session.save(record)
        self.log.info(
            "rotation started",
            rotation_id=rotation.id,
            mode=rotation.mode,
            old_key_id=old_id,
            old_key_unknown=plan.old.unknown,
            old_key_missing=missing,
            trigger=trigger,
            by=by,
        )
        self.e.fault("intent")

    def _settle_old_key(self, plan: Plan) -> tuple[str | None, bool]:
        """(old key id, deleted outside?): a key missing from two passes usage_lag apart is gone."""
        if plan.old.missing_id is None:
            return (plan.old_key.id if plan.old_key else None), False
        lag = self.policy.provider.usage_lag_s
        self.session.sleep_until(self.clock() + lag, self.e.sleep)
        if plan.old.missing_id in self.observe().keys:
            return plan.old.missing_id, False
        self.log.warning(
            "the served key was deleted outside vault-rotator; rotating as a first run",
            key_id=plan.old.missing_id,
        )
        return None, True

    # -- steps 2-4 ------------------------------------------------------------------------

    def forward(self) -> Progress:
        """Create (or find) the new key, verify it once, take the baseline, publish.

        Waiting out ``usage_lag`` after the verify is a state, not a sleep: the pass saves
        ``verified_at`` and returns; a later pass takes the baseline.
        """
        pending = self._pending_or_create()
        if not isinstance(pending, Pending):
            return pending
        if (recovered := self.recover_publish(pending)) is not None:
            return recovered
        rot = self.rotation
        if rot.verified_at is None or rot.verified_attempt != pending.attempt:
            try:
                self.provider.verify_key(Secret(pending.new_key_value))
            except ProviderPermanentError as exc:
                return self.fail(f"the new key {pending.new_key_id} failed verification: {exc}")
            self.log.info("new key verified", key_id=pending.new_key_id)
            self.e.fault("verify")
            self.session.stage(
                self.record.with_rotation(
                    verified_at=self.clock(), verified_attempt=pending.attempt
                )
            )
        baseline = self._baseline(pending, self.rotation.verified_at or 0.0)
        if baseline is None:
            return self.progress("waiting usage_lag after verifying the new key")
        if isinstance(baseline, str):
            return self.fail(baseline)
        return self._publish(pending, baseline)

    def recover_publish(self, pending: Pending) -> Progress | None:
        """A process died after writing the consumer secret but before saying so: catch up.

        The published key is served, so it must never be treated as unpublished (failed or
        cleaned up). Its baseline is taken now: use since publish only delays the pickup.
        """
        rot = self.rotation
        if self.kv.current_version(self.policy.secret_path) == rot.start_version:
            return None
        if self.find_version(rot.start_version, aborted=False) is None:
            return None
        new = self.observe().keys.get(pending.new_key_id)
        self.log.warning("found the new key already published; recording it")
        return self._publish(pending, mark_of(new) if new else UseMark())

    def _pending_or_create(self) -> Pending | Progress:
        env, name = self.policy.env, self.policy.name
        pending, version = self.store.read_pending(env, name)
        rot = self.rotation
        if pending and (pending.rotation_id, pending.attempt) == (rot.id, rot.attempt):
            return pending
        write = self.record.provider_write
        if write and write.action == reasons.CREATE and write.target == self.key_name(rot.attempt):
            # A create for this attempt may have reached the provider; its value is lost.
            self.save_rotation(attempt=rot.attempt + 1)
        while self.rotation.attempt <= MAX_CREATE_ATTEMPTS:
            try:
                created = self._create()
            except RateLimitedError as exc:
                return self._rate_limited(exc)
            if created is not None:
                return self._save_pending(created, version)
            self.save_rotation(attempt=self.rotation.attempt + 1)
        return self.fail(f"{MAX_CREATE_ATTEMPTS} create attempts gave no usable key")

    def _rate_limited(self, exc: RateLimitedError) -> Progress:
        """A create refused with 429 (nothing created): wait for a later pass, or stall.

        A wait the next pass (one poll interval away) covers is a transient failure, raised
        as it is: the driver and the daemon try again then, under the same name. A longer one
        stalls the rotation as ``rate-limited`` until an operator resumes it.
        """
        wait = exc.retry_after
        if wait is None or wait <= self.policy.provider.poll_interval_s:
            raise exc
        until = datetime.fromtimestamp(self.clock() + wait, UTC).isoformat(timespec="seconds")
        detail = (
            f"the provider refused the create with 429 and asks to wait {wait:g}s (until "
            f"{until}); nothing was created: resume after that"
        )
        return self.stall(reasons.RATE_LIMITED, detail)

    def _create(self) -> tuple[str, str, Secret] | None:
        rot = self.rotation
        name = self.key_name(rot.attempt)
        perms = rot.permissions
        spec = KeySpec(
            name=name,
            allowed_providers=perms.allowed_providers,
            allowed_models=perms.allowed_models,
            spending_limit=perms.spending_limit,
            limit_reset=perms.limit_reset,
            expires_at=datetime.fromisoformat(perms.expires_at) if perms.expires_at else None,
        )
        self.session.before_provider_write(reasons.CREATE, name, self.provider.worst_case_seconds())
        try:
            created = self.provider.create_key(spec)
        except AmbiguousCreateError as exc:
            self.log.warning(
                "create answer lost; will create again", name=shown(name), error=str(exc)
            )
            return None
        except ProviderError:
            # Refused (4xx, 429) or never sent: nothing was created, so this attempt's name is
            # still free; the next try reuses it instead of counting a lost create.
            self.session.save(self.record.evolve(provider_write=None))
            raise
        self.log.info("new key created", key_id=created.record.id, name=shown(name))
        self.e.fault("create")
        return created.record.id, name, created.value

    def _save_pending(self, created: tuple[str, str, Secret], version: int) -> Pending:
        key_id, name, value = created
        rot = self.rotation
        start = (
            self.kv.read(self.policy.secret_path, rot.start_version) if rot.start_version else None
        )
        pending = Pending(
            rotation_id=rot.id,
            attempt=rot.attempt,
            new_key_id=key_id,
            new_key_name=name,
            new_key_value=value.reveal(),
            old_secret=dict(start.data) if start and not start.deleted else None,
            old_version=rot.start_version,
        )
        try:
            self.store.write_pending(self.policy.env, self.policy.name, pending, cas=version)
        except StoreError as exc:
            self.log.warning(
                "could not save the new key; deleting it", key_id=key_id, error=str(exc)
            )
            self._delete_unsaved(key_id)
            raise
        self.e.fault("pending")
        return pending

    def _delete_unsaved(self, key_id: str) -> None:
        """Delete a key whose value could not be saved; the sweep retries if this fails too."""
        try:
            self.delete_key(key_id)
        except VaultRotatorError as exc:  # Vault, provider, or a lost lease: the sweep retries
            self.log.warning("left for the sweep", key_id=key_id, error=str(exc))

    def _baseline(self, pending: Pending, verified_at: float) -> UseMark | str | None:
        """The new key's use once ``usage_lag`` has passed since our verify; None: not yet."""
        lag = self.policy.provider.usage_lag_s
        now = self.clock()
        if now < verified_at + lag:
            return None
        new = self.observe().keys.get(pending.new_key_id)
        if new is None:
            return f"the new key {pending.new_key_id} is not listed after usage_lag"
        if new.problem is not None:
            return f"the new key {pending.new_key_id} is listed unreadable ({new.problem})"
        if (problem := self._permissions_differ(new)) is not None:
            return problem
        mark = mark_of(new)
        unseen = mark.last_used_at is None and self.provider.detected_dialect is not Dialect.A
        if unseen and now < verified_at + 2 * lag:
            return None  # our verify call has not shown up yet: one more usage_lag
        return mark

    def _permissions_differ(self, new: KeyRecord) -> str | None:
        perms = self.rotation.permissions
        checks = (
            ("allowed_providers", perms.allowed_providers),
            ("allowed_models", perms.allowed_models),
            ("spending_limit", perms.spending_limit),
        )
        for field, wanted in checks:
            listed = getattr(new, field)
            if wanted is not None and listed is not None and _norm(listed) != _norm(wanted):
                return f"the new key is listed with {field} {listed!r}, not {wanted!r}"
        return None

    def _publish(self, pending: Pending, baseline: UseMark) -> Progress:
        rot = self.rotation
        version = self._write_consumer(pending)
        if version is None:
            return self.stall(
                reasons.SECRET_CHANGED, "the consumer secret was written by someone else"
            )
        self.e.fault("publish")
        self._label(pending, version)
        now = self.clock()
        record = self.record.evolve(phase=reasons.PUBLISHED, provider_write=None).with_rotation(
            new_key_id=pending.new_key_id,
            new_key_name=pending.new_key_name,
            new_key_fp=fingerprint(pending.new_key_value),
            published_version=version,
            published_at=now,
            pickup_deadline=now + self.policy.pickup_timeout_s,
            baseline=baseline,
        )
        self.session.save(record)
        self.log.info(
            "new key published", key_id=pending.new_key_id, version=version, rotation_id=rot.id
        )
        self.e.fault("published")
        if rot.revoke_old_now and rot.old_key_id:
            self.log.warning(
                "revoke-old-now: deleting the old key right after publish; consumers that have "
                "not switched yet WILL FAIL",
                old_key_id=rot.old_key_id,
            )
        return self.progress("waiting for consumers to use the new key")

    def _write_consumer(self, pending: Pending) -> int | None:
        """Publish by CAS; the version holding our rotation_id, or None if someone else wrote."""
        rot = self.rotation
        path = self.policy.secret_path
        current = self.kv.read(path)
        if (current.version if current else 0) == rot.start_version:
            base = dict(current.data) if current and not current.deleted else {}
            data = base | {
                "api_key": pending.new_key_value,
                "key_id": pending.new_key_id,
                "key_name": pending.new_key_name,
                "rotated_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
                "rotation_id": rot.id,
            }
            try:
                return self.kv.write(path, data, cas=rot.start_version)
            except CasConflictError:
                pass
        return self.find_version(rot.start_version, aborted=False)

    def _label(self, pending: Pending, version: int) -> None:
        labels = {
            "managed-by": "vault-rotator",
            "key_id": pending.new_key_id,
            "rotation_id": pending.rotation_id,
            "version": str(version),
        }
        try:
            self.kv.set_custom_metadata(self.policy.secret_path, labels)
        except StoreError as exc:  # labels are for humans; the state record is the truth
            self.log.warning("could not label the consumer secret", error=str(exc))


def _norm(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(sorted(str(v) for v in value))
    if isinstance(value, int | float):
        return round(float(value), 6)
    return value
