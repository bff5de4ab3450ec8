"""What one pass works with: the record under the lease, the ports, the clock, the listener.

A pass is one process's turn at one key (under its lease once it acts, :mod:`.session`).
:class:`Pass` is built by the engine from its parts (composition: the effects get these, never
the engine itself) and handed to the machine (:mod:`.machine`), whose effects read and save the
record through it.

Listings: the routine ones (the preflight's, the baseline's, each pass's judgement of pickup and
drain) come from the caller's list pass of the account when it gives one (the daemon lists each
account once per poll for all its rotations: :class:`~.decide_create.Listing`). A pass that may
not list on its own (``may_list`` false, the daemon's) and has no current list pass ends there,
waiting for the next one (:class:`NeedListing`). Confirmations after a provider's 404 and
operators' commands always list afresh (:meth:`Pass.observe`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from vault_rotator.engine.decide import Observation, Timing
from vault_rotator.engine.decide_create import Listing
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.session import Session, StateStore
from vault_rotator.engine.state import Outcome, Pending, Rotation, Stall, StateRecord
from vault_rotator.errors import RateLimitedError, VaultRotatorError
from vault_rotator.policy import KeyPolicy, render_key_name
from vault_rotator.ports.kv import KvStore, Versioned
from vault_rotator.ports.provider import Dialect, KeyProvider

log = structlog.get_logger("vault_rotator.engine")

FaultHook = Callable[[str], None]


class RotationListener(Protocol):
    """Told when a rotation finishes or stalls (the canonical log line, metrics, webhooks)."""

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None: ...

    def stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None: ...


class Listeners:
    """Several listeners as one (the engine's list, which the daemon and the wiring extend)."""

    def __init__(self, listeners: list[RotationListener]) -> None:
        self.listeners = listeners

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None:
        for listener in self.listeners:
            listener.finished(policy, outcome, rotation)

    def stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None:
        for listener in self.listeners:
            listener.stalled(policy, rotation, stall)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a key's rotation stands after one pass."""

    ref: str
    phase: str
    rotation_id: str | None = None
    waiting: str = ""
    outcome: Outcome | None = None
    stalled: Stall | None = None
    # The record as this pass left it, and the version it builds on (for a caller that keeps
    # it for its next pass); ``carried``: it holds observations not written to Vault yet.
    known: tuple[StateRecord, int] | None = field(default=None, compare=False, repr=False)
    carried: bool = False
    wrote: bool = False  # the pass wrote the state record

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def published(self) -> bool:
        return self.phase in (Phase.PUBLISHED, Phase.ABORTING) or self.finished


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


class NeedListing(VaultRotatorError):
    """The pass needs a list pass it may not make on its own: it ends, waiting for the next."""


WAITING_FOR_LISTING = "waiting for the account's next list pass"


@dataclass(slots=True)
class Carry:
    """What a pass learned in an earlier turn of its loop, reused instead of read again.

    Nothing here is saved: it lives for one pass. The caller's list pass (the daemon lists an
    account once per tick) arrives as ``obs``.
    """

    obs: Observation | None = None  # a list pass still current for the next decision
    pending: Pending | None = None  # this attempt's pending record, once read or written
    pending_version: int | None = None  # its version for the next CAS; None: not read yet
    published_checked: bool = False  # the secret was checked for an unrecorded publish
    verify_failure: str | None = None
    rate_limited: RateLimitedError | None = None
    listing: Listing | None = None
    secret_read: Versioned | None = None  # the consumer secret as read in this pass


@dataclass(slots=True)
class Pass:
    """The record under the lease, and what the effects need to act on it."""

    policy: KeyPolicy  # the rotation's own policy (as it started), else the caller's
    session: Session
    store: StateStore
    kv: KvStore
    provider: KeyProvider
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    fault: FaultHook
    listener: RotationListener
    new_id: Callable[[], str]
    command: Command = field(default_factory=Command)
    start: bool = False  # start a rotation if the record is idle (and the verb is rotate)
    shared: Listing | None = None  # the caller's list pass of this account, if any
    may_list: bool = True  # False: routine listings come only from ``shared``
    trusted: bool = False  # the record is as this process left it: no crash traces to look for
    log: Any = None

    def __post_init__(self) -> None:
        self.log = log.bind(key=self.policy.ref)

    @property
    def record(self) -> StateRecord:
        return self.session.record

    @property
    def rotation(self) -> Rotation:
        assert self.record.rotation is not None
        return self.record.rotation

    def save(self, record: StateRecord) -> None:
        self.session.save(record)

    def save_rotation(self, **changes: object) -> None:
        self.session.save(self.record.with_rotation(**changes))

    def stage(self, record: StateRecord) -> None:
        """Keep ``record`` for the next save (observations ride on the lease's release)."""
        self.session.stage(record)

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
        """A list pass of the account made now, by this pass (after a 404, for an operator).

        Under the lease, made to outlive every page's request.
        """
        budget = self.provider.worst_case_seconds()
        keys = self.provider.list_keys(before_page=lambda: self.session.ensure(budget))
        return Observation.of(tuple(keys), self.clock())

    def routine_listing(self, asked_after: float = 0.0) -> Listing:
        """The caller's list pass if it was asked for at ``asked_after`` or later, else one of
        this pass's own (lease-free: a listing is no side effect), else NeedListing."""
        shared = self.shared
        if shared is not None and shared.asked_at >= asked_after:
            return shared
        if not self.may_list:
            raise NeedListing(WAITING_FOR_LISTING)
        asked_at = self.clock()
        budget = self.provider.worst_case_seconds()
        session = self.session
        keys = self.provider.list_keys(
            before_page=lambda: session.ensure(budget) if session.held else None
        )
        return Listing(Observation.of(tuple(keys), self.clock()), asked_at)

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
            self.stage(self.record.evolve(dialect=known.value))

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
