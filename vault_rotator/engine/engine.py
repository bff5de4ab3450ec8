"""The rotation engine: one key's forward rotation, crash-safe, step by step.

Each call to :meth:`Engine.advance` takes the key's lease, moves the rotation as far as it can
without waiting on consumers, saves, and releases. Every step saves its state before its side
effect and is idempotent, so a process that dies anywhere is finished by the next one:

0. preflight (no side effects)          5. confirm pickup (new key's use > baseline)
1. intent            (state write)      6. drain (old key quiet for drain_period + usage_lag)
2. create; save value (pending write)   7. delete the old key (secret re-read first)
3. verify; baseline after usage_lag     8. sweep strays, done (state write), destroy pending
4. publish (consumer write, CAS); published (state write)

Provider writes are fenced: "about to <action> on <target>" is saved first (see
:mod:`.session`). A create whose answer was lost (ambiguous error, or a crash before the value
was saved) raises the attempt; the sweep deletes every key named for an attempt of this
rotation except the published one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Decision, Observation, Timing, decide_published, mark_of
from vault_rotator.engine.preflight import Plan, check_capabilities, preflight
from vault_rotator.engine.session import Session, StateStore, default_holder
from vault_rotator.engine.state import Outcome, Pending, Rotation, Stall, StateRecord, UseMark
from vault_rotator.errors import (
    AmbiguousCreateError,
    CasConflictError,
    ProviderError,
    ProviderPermanentError,
    StoreError,
    VaultRotatorError,
)
from vault_rotator.policy import KeyPolicy, render_key_name
from vault_rotator.provider.port import Dialect, KeyProvider, KeyRecord, KeySpec
from vault_rotator.secret import Secret, fingerprint
from vault_rotator.store.port import KvStore

log = structlog.get_logger(__name__)

MAX_CREATE_ATTEMPTS = 5
CONSUMER_FIELDS = ("api_key", "key_id", "key_name", "rotated_at", "rotation_id")
FAULT_ENV = "VAULT_ROTATOR_FAULT_AT"
BOUNDARIES = (
    "intent", "create", "pending", "verify", "publish", "published",
    "sweep", "delete", "done", "destroy",
)  # fmt: skip

ProviderFactory = Callable[[KeyPolicy, str | None], KeyProvider]
FaultHook = Callable[[str], None]


def env_fault_hook(step: str) -> None:
    """Test-only: die (SIGKILL) at the boundary named by ``VAULT_ROTATOR_FAULT_AT``."""
    if os.environ.get(FAULT_ENV) == step:
        import signal  # noqa: PLC0415

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a key's rotation stands after one pass."""

    ref: str
    phase: str
    rotation_id: str | None = None
    waiting: str = ""
    outcome: Outcome | None = None
    stalled: Stall | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def published(self) -> bool:
        return self.phase == reasons.PUBLISHED or self.finished


def new_rotation_id(clock: Callable[[], float]) -> str:
    """A short, time-ordered id: 6 base32 chars of milliseconds, 4 random."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    millis = int(clock() * 1000)
    head = "".join(alphabet[(millis >> (5 * i)) & 31] for i in reversed(range(8)))[-6:]
    tail = "".join(alphabet[b & 31] for b in os.urandom(4))
    return head + tail


class Engine:
    """Rotates keys described by policies, through a KV store and a provider port."""

    def __init__(
        self,
        *,
        kv_for: Callable[[str], KvStore],
        providers: ProviderFactory,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        lease_ttl: float = 30.0,
        holder: str | None = None,
        fault: FaultHook = env_fault_hook,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.kv_for = kv_for
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.lease_ttl = lease_ttl
        self.holder = holder or default_holder()
        self.fault = fault
        self.new_id = new_id or (lambda: new_rotation_id(clock))

    # -- entry points ---------------------------------------------------------------------

    def store(self, policy: KeyPolicy) -> StateStore:
        return StateStore(self.kv_for(policy.vault.kv_mount), policy.vault.state_prefix)

    def read(self, policy: KeyPolicy) -> StateRecord:
        return self.store(policy).read(policy.env, policy.name)[0]

    def plan(self, policy: KeyPolicy) -> Plan:
        """Preflight only: what a rotation would do. No side effects."""
        record = self.read(policy)
        provider = self.providers(policy, record.dialect)
        kv = self.kv_for(policy.vault.kv_mount)
        return preflight(policy, kv, self.store(policy), provider, now=self.clock())

    def advance(
        self,
        policy: KeyPolicy,
        *,
        start: bool = False,
        trigger: str = "cli",
        by: str = "",
        observation: Observation | None = None,
    ) -> Progress:
        """One pass under the lease: start (if asked and idle) or continue the rotation."""
        store = self.store(policy)
        if start:  # before touching the record, so a weak token gets the full list of gaps
            check_capabilities(policy, self.kv_for(policy.vault.kv_mount), store)
        session = Session.acquire(
            store, policy.env, policy.name, holder=self.holder, clock=self.clock, ttl=self.lease_ttl
        )
        try:
            pass_ = _Pass(self, session, store, policy)
            progress = pass_.run(start=start, trigger=trigger, by=by, observation=observation)
        except (Exception, KeyboardInterrupt, SystemExit):
            _release_quietly(session)
            raise
        session.release()
        return progress


def _release_quietly(session: Session) -> None:
    """Give the lease back after a failed pass; if that fails too, it simply expires."""
    try:
        session.release()
    except VaultRotatorError as exc:
        log.warning("could not release the lease; it will expire", error=str(exc))


class _Pass:
    """One pass over one key's record while holding its lease."""

    def __init__(self, engine: Engine, session: Session, store: StateStore, policy: KeyPolicy):
        self.e = engine
        self.session = session
        self.store = store
        rotation = session.record.rotation
        # An in-flight rotation follows the policy it started with, even if the file changed.
        self.policy = KeyPolicy.from_dict(dict(rotation.policy)) if rotation else policy
        self.kv = engine.kv_for(self.policy.vault.kv_mount)
        self.provider = engine.providers(self.policy, session.record.dialect)
        self.log = log.bind(key=self.policy.ref)

    @property
    def record(self) -> StateRecord:
        return self.session.record

    @property
    def rotation(self) -> Rotation:
        assert self.record.rotation is not None
        return self.record.rotation

    def save_rotation(self, **changes: object) -> None:
        self.session.save(self.record.with_rotation(**changes))

    def progress(self, waiting: str = "", outcome: Outcome | None = None) -> Progress:
        rot = self.record.rotation
        return Progress(
            ref=self.policy.ref,
            phase=self.record.phase,
            rotation_id=rot.id if rot else (outcome.rotation_id if outcome else None),
            waiting=waiting,
            outcome=outcome,
            stalled=rot.stalled if rot else None,
        )

    def run(
        self, *, start: bool, trigger: str, by: str, observation: Observation | None
    ) -> Progress:
        phase = self.record.phase
        if phase == reasons.IDLE:
            self._drop_stale_pending()
            if not start:
                return self.progress()
            self._intent(trigger, by)
            phase = reasons.INTENT
        if self.rotation.stalled is not None:
            return self.progress(f"stalled: {self.rotation.stalled.reason}")
        if phase == reasons.INTENT:
            return self._forward()
        obs = observation or self.observe()
        if phase == reasons.CLEANUP:
            return self._cleanup(obs)
        return self._published(obs)

    # -- helpers --------------------------------------------------------------------------

    def observe(self) -> Observation:
        """One list pass of the account."""
        self.session.ensure(self.provider.worst_case_seconds())
        return Observation.of(tuple(self.provider.list_keys()), self.e.clock())

    def timing(self) -> Timing:
        p = self.policy
        return Timing(
            p.provider.usage_lag_s, p.pickup_timeout_s, p.drain_period_s, p.drain_timeout_s
        )

    def key_name(self, attempt: int) -> str:
        rot = self.rotation
        return render_key_name(
            self.policy.key_name,
            env=self.policy.env,
            name=self.policy.name,
            date=datetime.fromisoformat(rot.date).date(),
            rotation_id=rot.attempt_tag(attempt),
        )

    def attempt_names(self) -> frozenset[str]:
        return frozenset(self.key_name(n) for n in range(1, self.rotation.attempt + 1))

    def delete_key(self, key_id: str) -> bool:
        budget = self.provider.worst_case_seconds()
        self.session.before_provider_write(reasons.DELETE, key_id, budget)
        deleted = self.provider.delete_key(key_id)
        self.log.info("provider key deleted", key_id=key_id, already_gone=not deleted)
        return deleted

    def _drop_stale_pending(self) -> None:
        pending, version = self.store.read_pending(self.policy.env, self.policy.name)
        if version:
            self.log.warning("destroying a stale pending record", had_value=pending is not None)
            self.store.destroy_pending(self.policy.env, self.policy.name)

    # -- steps 0-1: preflight and intent --------------------------------------------------

    def _intent(self, trigger: str, by: str) -> None:
        plan = preflight(
            self.policy,
            self.kv,
            self.store,
            self.provider,
            now=self.e.clock(),
            capabilities_checked=True,
        )
        now = self.e.clock()
        rotation = Rotation(
            id=self.e.new_id(),
            attempt=1,
            date=datetime.fromtimestamp(now, UTC).date().isoformat(),
            policy=self.policy.to_dict(),
            permissions=plan.permissions,
            started_at=now,
            start_version=plan.start_version,
            trigger=trigger,
            by=by,
            old_key_id=plan.old_key.id if plan.old_key else None,
            old_key_name=plan.old_key.name if plan.old_key else None,
        )
        record = self.record.evolve(
            phase=reasons.INTENT, rotation=rotation, dialect=plan.dialect, provider_write=None
        )
        self.session.save(record)
        self.log.info(
            "rotation started",
            rotation_id=rotation.id,
            old_key_id=rotation.old_key_id,
            old_key_unknown=plan.old_key_unknown,
            trigger=trigger,
            by=by,
        )
        self.e.fault("intent")

    # -- steps 2-4: create, verify, baseline, publish -------------------------------------

    def _forward(self) -> Progress:
        pending = self._pending_or_create()
        if pending is None:
            return self.progress("create failed; will retry")
        try:
            self.provider.verify_key(Secret(pending.new_key_value))
        except ProviderPermanentError as exc:
            return self._fail(f"the new key {pending.new_key_id} failed verification: {exc}")
        verified_at = self.e.clock()
        self.log.info("new key verified", key_id=pending.new_key_id)
        self.e.fault("verify")
        baseline = self._baseline(pending, verified_at)
        if isinstance(baseline, str):
            return self._fail(baseline)
        return self._publish(pending, baseline)

    def _pending_or_create(self) -> Pending | None:
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
            created = self._create()
            if created is not None:
                return self._save_pending(created, version)
            self.save_rotation(attempt=self.rotation.attempt + 1)
        self._fail(f"{MAX_CREATE_ATTEMPTS} create attempts gave no usable key")
        return None

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
            self.log.warning("create answer lost; will create again", name=name, error=str(exc))
            return None
        self.log.info("new key created", key_id=created.record.id, name=name)
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
            old_secret=dict(start.data) if start else None,
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
        except (StoreError, ProviderError) as exc:
            self.log.warning("left for the sweep", key_id=key_id, error=str(exc))

    def _baseline(self, pending: Pending, verified_at: float) -> UseMark | str:
        """The new key's use once ``usage_lag`` has passed since our verify, or a failure."""
        lag = self.policy.provider.usage_lag_s
        self.session.sleep_until(verified_at + lag, self.e.sleep)
        obs = self.observe()
        new = obs.keys.get(pending.new_key_id)
        if new is None:
            return f"the new key {pending.new_key_id} is not listed after usage_lag"
        if (problem := self._permissions_differ(new)) is not None:
            return problem
        mark = mark_of(new)
        if mark.last_used_at is None and self.provider.dialect != Dialect.A:
            # Our verify call has not shown up yet: give the provider one more usage_lag.
            self.session.sleep_until(self.e.clock() + lag, self.e.sleep)
            again = self.observe().keys.get(pending.new_key_id)
            mark = mark_of(again) if again else mark
        return mark

    def _permissions_differ(self, new: KeyRecord) -> str | None:
        perms = self.rotation.permissions
        checks = (
            ("allowed_providers", perms.allowed_providers),
            ("allowed_models", perms.allowed_models),
            ("spending_limit", perms.spending_limit),
        )
        for field, wanted in checks:
            shown = getattr(new, field)
            if wanted is not None and shown is not None and _norm(shown) != _norm(wanted):
                return f"the new key is listed with {field} {shown!r}, not {wanted!r}"
        return None

    def _publish(self, pending: Pending, baseline: UseMark) -> Progress:
        rot = self.rotation
        version = self._write_consumer(pending)
        if version is None:
            return self._stall(
                reasons.SECRET_CHANGED, "the consumer secret was written by someone else"
            )
        self.e.fault("publish")
        self._label(pending, version)
        now = self.e.clock()
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
                "rotated_at": datetime.fromtimestamp(self.e.clock(), UTC).isoformat(),
                "rotation_id": rot.id,
            }
            try:
                return self.kv.write(path, data, cas=rot.start_version)
            except CasConflictError:
                pass
        return self._find_published(path, rot)

    def _find_published(self, path: str, rot: Rotation) -> int | None:
        latest = self.kv.current_version(path)
        for version in range(rot.start_version + 1, latest + 1):
            got = self.kv.read(path, version)
            if got is not None and got.data.get("rotation_id") == rot.id:
                return version
        return None

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

    # -- steps 5-8: pickup, drain, delete, clean up ---------------------------------------

    def _published(self, obs: Observation) -> Progress:
        rot = self.rotation
        write = self.record.provider_write
        redo = write and write.action == reasons.DELETE and write.target == rot.old_key_id
        if redo and not rot.old_deleted:
            return self._delete_old(obs)  # we may have deleted it already: a 404 is fine
        decision = decide_published(
            rot, obs, self.timing(), self.attempt_names(), now=self.e.clock()
        )
        return self._apply(decision, obs)

    def _apply(self, decision: Decision, obs: Observation) -> Progress:
        self.session.stage(self.record.evolve(rotation=decision.rotation))
        if decision.action == "sweep":
            for key_id in decision.sweep_ids:
                self.delete_key(key_id)
            self.e.fault("sweep")
            return self.progress("removing keys this rotation created but did not publish")
        if decision.action == "stall":
            return self._stall(decision.reason, decision.detail)
        if decision.action == "delete-old":
            return self._delete_old(obs)
        if decision.action == "finish":
            return self._done()
        return self.progress(decision.reason)

    def _delete_old(self, obs: Observation) -> Progress:
        rot = self.rotation
        assert rot.old_key_id is not None
        current = self.kv.read(self.policy.secret_path)
        if (
            current is None
            or current.data.get("rotation_id") != rot.id
            or (current.data.get("key_id") != rot.new_key_id)
        ):
            return self._stall(
                reasons.SECRET_CHANGED, "the consumer secret no longer serves our key"
            )
        deleted = self.delete_key(rot.old_key_id)
        self.e.fault("delete")
        if not deleted and rot.old_key_id in self.observe().keys:
            return self._stall(
                reasons.DELETE_UNCONFIRMED,
                f"the provider answered 404 for {rot.old_key_id} yet still lists it",
            )
        self.session.stage(self.record.with_rotation(old_deleted=True))
        return self._published(obs)

    def _done(self) -> Progress:
        rot = self.rotation
        known_old = rot.old_key_id is not None or rot.start_version == 0
        outcome = Outcome(
            rotation_id=rot.id,
            outcome=reasons.SUCCEEDED if known_old else reasons.SUCCEEDED_OLD_UNKNOWN,
            at=self.e.clock(),
            trigger=rot.trigger,
            by=rot.by,
            old_key_id=rot.old_key_id,
            new_key_id=rot.new_key_id,
            detail="" if known_old else "the old key is unknown: it was not deleted",
        )
        return self._finish(outcome, current_key_id=rot.new_key_id)

    def _finish(self, outcome: Outcome, *, current_key_id: str | None) -> Progress:
        rot = self.rotation
        self.session.save(self.record.finished(outcome, current_key_id=current_key_id))
        self.e.fault("done")
        self.store.destroy_pending(self.policy.env, self.policy.name)
        self.e.fault("destroy")
        self.log.info(
            "rotation finished",
            rotation_id=outcome.rotation_id,
            outcome=outcome.outcome,
            trigger=outcome.trigger,
            by=outcome.by,
            old_key_id=outcome.old_key_id,
            new_key_id=outcome.new_key_id,
            seconds=round(outcome.at - rot.started_at, 3),
            detail=outcome.detail,
        )
        return self.progress(outcome=outcome)

    def _stall(self, reason: str, detail: str) -> Progress:
        stall = Stall(reason, detail, self.e.clock())
        self.save_rotation(stalled=stall)
        self.log.warning("rotation stalled", reason=reason, detail=detail)
        return self.progress(f"stalled: {reason}")

    # -- failure before publish: remove what we created -----------------------------------

    def _fail(self, why: str) -> Progress:
        self.log.error("rotation failed before publishing; cleaning up", reason=why)
        self.session.save(self.record.evolve(phase=reasons.CLEANUP).with_rotation(failure=why))
        return self._cleanup(self.observe())

    def _cleanup(self, obs: Observation) -> Progress:
        names = self.attempt_names()
        ours = sorted(k.id for k in obs.keys.values() if k.name in names)
        if ours:
            for key_id in ours:
                self.delete_key(key_id)
            return self.progress("removing the keys of a failed rotation")
        rot = self.rotation
        outcome = Outcome(
            rotation_id=rot.id,
            outcome=reasons.FAILED_VERIFY,
            at=self.e.clock(),
            trigger=rot.trigger,
            by=rot.by,
            old_key_id=rot.old_key_id,
            new_key_id=None,
            detail=rot.failure or "",
        )
        return self._finish(outcome, current_key_id=self.record.current_key_id)


def _norm(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(sorted(str(v) for v in value))
    if isinstance(value, int | float):
        return round(float(value), 6)
    return value
