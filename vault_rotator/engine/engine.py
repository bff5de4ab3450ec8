"""The rotation engine: wires one pass of the machine (:mod:`.machine`) under a key's lease.

Each call to :meth:`Engine.advance` takes the key's lease, builds the pass's parts (the ports,
the session, the clock, the fault hook, the listeners), runs the machine as far as it can go
without waiting on consumers, and releases the lease. The steps, the phases and what decides
each are drawn in :mod:`.machine`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog

from vault_rotator.engine.context import (
    Command,
    FaultHook,
    Listeners,
    Pass,
    Progress,
    RotationListener,
    Verb,
)
from vault_rotator.engine.decide import Observation
from vault_rotator.engine.effects import stall
from vault_rotator.engine.machine import run_pass
from vault_rotator.engine.preflight import Plan, check_capabilities, preflight
from vault_rotator.engine.session import Session, StateStore, default_holder
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore
from vault_rotator.ports.provider import KeyProvider

__all__ = [
    "BOUNDARIES",
    "Command",
    "Engine",
    "FaultHook",
    "Progress",
    "RotationListener",
    "Verb",
    "no_fault",
]

log = structlog.get_logger(__name__)
BOUNDARIES = (
    "intent", "create", "pending", "verify", "publish", "published",
    "sweep", "disable", "delete", "done", "destroy",
)  # fmt: skip


ProviderFactory = Callable[[KeyPolicy, str | None], KeyProvider]


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

        def one_pass(p: Pass) -> Progress:
            # A rotation follows its own policy: if its account differs, list that one.
            same_account = p.policy.account == policy.account
            return run_pass(p, observation if same_account else None)

        return self._under_lease(policy, store, one_pass, command=command, start=start)

    def stall(self, policy: KeyPolicy, reason: str, detail: str) -> Progress:
        """Record a stall on the rotation in flight (e.g. retries exhausted); no-op if idle."""

        def record_stall(p: Pass) -> Progress:
            rotation = p.record.rotation
            if rotation is None or rotation.stalled is not None:
                return p.progress()
            return stall(p, reason, detail)

        return self._under_lease(policy, self.store(policy), record_stall)

    def _under_lease(
        self,
        policy: KeyPolicy,
        store: StateStore,
        act: Callable[[Pass], Progress],
        *,
        command: Command | None = None,
        start: bool = False,
    ) -> Progress:
        session = Session.acquire(
            store, policy.env, policy.name, holder=self.holder, clock=self.clock, ttl=self.lease_ttl
        )
        try:
            one_pass = self._pass(session, store, policy, command or Command(), start)
            progress = act(one_pass)
        except (Exception, KeyboardInterrupt, SystemExit):
            _release_quietly(session)
            raise
        one_pass.note_dialect()
        session.release()
        return progress

    def _pass(
        self, session: Session, store: StateStore, policy: KeyPolicy, command: Command, start: bool
    ) -> Pass:
        """The parts of one pass; a rotation in flight follows the policy it started with."""
        rotation = session.record.rotation
        own = KeyPolicy.from_dict(dict(rotation.policy)) if rotation else policy
        return Pass(
            policy=own,
            session=session,
            store=store,
            kv=self.kv_for(own.vault.kv_mount),
            provider=self.providers(own, session.record.dialect),
            clock=self.clock,
            sleep=self.sleep,
            fault=self.fault,
            listener=Listeners(self.listeners),
            new_id=self.new_id,
            command=command,
            start=start,
        )


def _release_quietly(session: Session) -> None:
    """Give the lease back after a failed pass; if that fails too, it simply expires."""
    try:
        session.release()
    except VaultRotatorError as exc:
        log.warning("could not release the lease; it will expire", error=str(exc))
