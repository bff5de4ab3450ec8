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
from typing import Protocol

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.decide import Observation
from vault_rotator.engine.forward import ForwardSteps
from vault_rotator.engine.operator import Command, OperatorSteps, Verb
from vault_rotator.engine.passes import Progress
from vault_rotator.engine.preflight import Plan, check_capabilities, preflight
from vault_rotator.engine.published import PublishedSteps
from vault_rotator.engine.session import Session, StateStore, default_holder
from vault_rotator.engine.state import Outcome, Rotation, Stall, StateRecord
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore
from vault_rotator.ports.provider import KeyProvider

__all__ = ["BOUNDARIES", "Command", "Engine", "Progress", "Verb", "no_fault"]

log = structlog.get_logger(__name__)
BOUNDARIES = (
    "intent", "create", "pending", "verify", "publish", "published",
    "sweep", "disable", "delete", "done", "destroy",
)  # fmt: skip


class RotationListener(Protocol):
    """Told when a rotation finishes or stalls (the daemon's metrics and notifications)."""

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None: ...

    def stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None: ...


ProviderFactory = Callable[[KeyPolicy, str | None], KeyProvider]
FaultHook = Callable[[str], None]


def no_fault(_step: str) -> None:
    """The default fault hook: nothing happens at a step boundary (tests pass their own)."""


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
        fault: FaultHook = no_fault,
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
        self.listeners: list[RotationListener] = []

    def on_finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None:
        for listener in self.listeners:
            listener.finished(policy, outcome, rotation)

    def on_stalled(self, policy: KeyPolicy, rotation: Rotation, stall: Stall) -> None:
        for listener in self.listeners:
            listener.stalled(policy, rotation, stall)

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
        command: Command | None = None,
        observation: Observation | None = None,
    ) -> Progress:
        """One pass under the lease: apply ``command`` (start it if idle and ``start``), go on."""
        command = command or Command()
        store = self.store(policy)
        if start:  # before touching the record, so a weak token gets the full list of gaps
            check_capabilities(policy, self.kv_for(policy.vault.kv_mount), store)
        return self._under_lease(
            policy, store, lambda p: p.run(command, start=start, observation=observation)
        )

    def stall(self, policy: KeyPolicy, reason: str, detail: str) -> Progress:
        """Record a stall on the rotation in flight (e.g. retries exhausted); no-op if idle."""
        return self._under_lease(
            policy, self.store(policy), lambda p: p.record_stall(reason, detail)
        )

    def _under_lease(
        self, policy: KeyPolicy, store: StateStore, act: Callable[[_Pass], Progress]
    ) -> Progress:
        session = Session.acquire(
            store, policy.env, policy.name, holder=self.holder, clock=self.clock, ttl=self.lease_ttl
        )
        try:
            one_pass = _Pass(self, session, store, policy)
            progress = act(one_pass)
        except (Exception, KeyboardInterrupt, SystemExit):
            _release_quietly(session)
            raise
        one_pass.note_dialect()
        session.release()
        return progress


class _Pass(ForwardSteps, PublishedSteps, OperatorSteps):
    """One pass over one key's record while holding its lease."""

    def run(self, command: Command, *, start: bool, observation: Observation | None) -> Progress:
        if self.record.phase == reasons.IDLE:
            self.drop_stale_pending()
            if not start or command.verb != Verb.ROTATE:
                return self.progress()
            self.intent(
                trigger=command.trigger,
                by=command.by,
                emergency=command.emergency,
                revoke_old_now=command.revoke_old_now,
            )
        elif (early := self._apply_command(command)) is not None:
            return early
        if self.rotation.stalled is not None:
            return self.progress(f"stalled: {self.rotation.stalled.reason}")
        if self.policy.account != self.given_account:
            observation = None  # the rotation's own account differs (config changed): list it
        return self.step(observation)

    def step(self, observation: Observation | None) -> Progress:
        """Move the rotation in flight on from its saved phase."""
        if self.record.phase == reasons.INTENT:
            return self.forward()
        obs = observation or self.observe()
        match self.record.phase:
            case reasons.CLEANUP:
                return self.cleanup(obs)
            case reasons.ABORTING:
                return self.aborting(obs)
        return self.published(obs)

    def record_stall(self, reason: str, detail: str) -> Progress:
        if self.record.rotation is None or self.rotation.stalled is not None:
            return self.progress()
        return self.stall(reason, detail)

    def _apply_command(self, command: Command) -> Progress | None:
        match command.verb:
            case Verb.ROTATE if command.emergency:
                self.upgrade_to_emergency(command.revoke_old_now)
            case Verb.RESUME:
                self.resume()
            case Verb.ABORT:
                return self.abort()
            case Verb.FINISH_KEEP_OLD:
                return self.finish_keep_old()
        return None


def _release_quietly(session: Session) -> None:
    """Give the lease back after a failed pass; if that fails too, it simply expires."""
    try:
        session.release()
    except VaultRotatorError as exc:
        log.warning("could not release the lease; it will expire", error=str(exc))
