"""What every step of a pass shares: the record under the lease, the provider, the clock.

A pass is one process's turn at one key while it holds the key's lease. :class:`PassBase` holds
the helpers; the steps live in :mod:`.forward`, :mod:`.published` and :mod:`.operator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Observation, Timing
from vault_rotator.engine.session import Session, StateStore
from vault_rotator.engine.state import Outcome, Pending, Rotation, Stall, StateRecord
from vault_rotator.logs import canonical_rotation_line
from vault_rotator.policy import KeyPolicy, render_key_name
from vault_rotator.ports.kv import KvStore
from vault_rotator.ports.provider import Dialect, KeyProvider

if TYPE_CHECKING:
    from vault_rotator.engine.engine import Engine

log = structlog.get_logger("vault_rotator.engine")


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
        return self.phase in (reasons.PUBLISHED, reasons.ABORTING) or self.finished


class PassBase:
    """The record, ports and helpers of one pass."""

    def __init__(self, engine: Engine, session: Session, store: StateStore, policy: KeyPolicy):
        self.given_account = policy.account  # whose list pass a caller may hand us
        self.e = engine
        self.session = session
        self.store = store
        rotation = session.record.rotation
        # An in-flight rotation follows the policy it started with, even if the file changed.
        self.policy = KeyPolicy.from_dict(dict(rotation.policy)) if rotation else policy
        self.kv: KvStore = engine.kv_for(self.policy.vault.kv_mount)
        self.provider: KeyProvider = engine.providers(self.policy, session.record.dialect)
        self.log = log.bind(key=self.policy.ref)

    @property
    def clock(self) -> Callable[[], float]:
        return self.e.clock

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

    def observe(self) -> Observation:
        """One list pass of the account; the lease is made to outlive every page's request."""
        budget = self.provider.worst_case_seconds()
        keys = self.provider.list_keys(before_page=lambda: self.session.ensure(budget))
        return Observation.of(tuple(keys), self.clock())

    def timing(self) -> Timing:
        p = self.policy
        dialect = self.known_dialect() or Dialect.A.value
        return Timing(
            usage_lag=p.provider.usage_lag_s,
            pickup_timeout=p.pickup_timeout_s,
            drain_period=p.drain_period_s,
            drain_timeout=p.drain_timeout_s,
            disable_before_delete=p.disable_before_delete_for(dialect),
        )

    def known_dialect(self) -> str | None:
        """The account's dialect as the provider client knows it now, else as last saved."""
        known = self.provider.detected_dialect
        return known.value if known is not None else self.record.dialect

    def note_dialect(self) -> None:
        """Stage the known dialect so the lease's release saves it (a hint for new processes)."""
        known = self.provider.detected_dialect
        if known is not None and known.value != self.record.dialect:
            self.session.stage(self.record.evolve(dialect=known.value))

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
        """Delete a key at the provider, fenced; False if it was already gone."""
        budget = self.provider.worst_case_seconds()
        self.session.before_provider_write(reasons.DELETE, key_id, budget)
        deleted = self.provider.delete_key(key_id)
        self.log.info("provider key deleted", key_id=key_id, already_gone=not deleted)
        return deleted

    def set_disabled(self, key_id: str, *, disabled: bool) -> None:
        """Disable or re-enable a key at the provider, fenced."""
        action = reasons.DISABLE if disabled else reasons.ENABLE
        self.session.before_provider_write(action, key_id, self.provider.worst_case_seconds())
        self.provider.update_key(key_id, disabled=disabled)
        self.log.info(f"provider key {action}d", key_id=key_id)

    def reenable_old(self) -> None:
        """Every exit that does not delete the old key re-enables it first."""
        rot = self.rotation
        if rot.old_disabled_at is not None and rot.old_key_id and not rot.old_deleted:
            self.set_disabled(rot.old_key_id, disabled=False)
            self.save_rotation(old_disabled_at=None)

    def find_version(self, after: int, *, aborted: bool) -> int | None:
        """The first version after ``after`` that this rotation wrote (its abort, if asked)."""
        path = self.policy.secret_path
        for version in range(after + 1, self.kv.current_version(path) + 1):
            got = self.kv.read(path, version)
            if got is None or got.data.get("rotation_id") != self.rotation.id:
                continue
            if bool(got.data.get("aborted")) == aborted:
                return version
        return None

    def drop_stale_pending(self) -> None:
        pending, version = self.store.read_pending(self.policy.env, self.policy.name)
        if version:
            self.log.warning("destroying a stale pending record", had_value=pending is not None)
            self.store.destroy_pending(self.policy.env, self.policy.name)

    def outcome(self, name: str, *, new_key_id: str | None, detail: str = "") -> Outcome:
        rot = self.rotation
        return Outcome(
            rotation_id=rot.id,
            outcome=name,
            at=self.clock(),
            trigger=rot.trigger,
            by=rot.by,
            old_key_id=rot.old_key_id,
            new_key_id=new_key_id,
            detail=detail,
        )

    def finish(self, outcome: Outcome, *, current_key_id: str | None) -> Progress:
        """Done: the record goes idle with the outcome, then pending is destroyed."""
        rotation = self.rotation
        self.session.save(self.record.finished(outcome, current_key_id=current_key_id))
        self.e.fault("done")
        self.store.destroy_pending(self.policy.env, self.policy.name)
        self.e.fault("destroy")
        canonical_rotation_line(
            outcome, rotation, env=self.policy.env, name=self.policy.name, logger=self.log
        )
        self.e.on_finished(self.policy, outcome, rotation)
        return self.progress(outcome=outcome)

    def fail(self, why: str) -> Progress:
        """Before publishing: remove what this rotation created; the old key stays served."""
        self.log.error("rotation failed before publishing; cleaning up", reason=why)
        self.session.save(self.record.evolve(phase=reasons.CLEANUP).with_rotation(failure=why))
        return self.cleanup(self.observe())

    def cleanup(self, obs: Observation) -> Progress:
        """Delete every key of this rotation, then finish (see :mod:`.published`)."""
        raise NotImplementedError

    def recover_publish(self, pending: Pending) -> Progress | None:
        """Record a publish a crashed pass made but did not save (see :mod:`.forward`)."""
        raise NotImplementedError

    def stall(self, reason: str, detail: str) -> Progress:
        """Stop and wait for an operator; both keys stay alive (the old one re-enabled)."""
        self.reenable_old()
        stall = Stall(reason, detail, self.clock())
        self.save_rotation(stalled=stall)
        self.log.warning("rotation stalled", reason=reason, detail=detail)
        self.e.on_stalled(self.policy, self.rotation, stall)
        return self.progress(f"stalled: {reason}")
