"""The rotation engine: wires one pass of the machine (:mod:`.machine`) on a key's record.

Each call to :meth:`Engine.advance` opens a session on the key's record (:mod:`.session`: the
lease is taken by the pass's first write, if it writes at all), builds the pass's parts (the
ports, the session, the clock, the fault hook, the listeners), runs the machine as far as it
can go without waiting on consumers, and ends the session (the lease given back with the last
write). A pass on an operator's behalf then bumps the change signal (:mod:`.changes`). The
steps, the phases and what decides each are drawn in :mod:`.machine`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import structlog

from vault_rotator.engine.changes import note_change
from vault_rotator.engine.context import (
    Command,
    FaultHook,
    Listeners,
    Pass,
    Progress,
    RotationListener,
    Verb,
)
from vault_rotator.engine.decide_create import Listing
from vault_rotator.engine.effects import stall
from vault_rotator.engine.machine import run_pass
from vault_rotator.engine.preflight import Plan, check_capabilities, preflight
from vault_rotator.engine.session import Known, Session, StateStore, default_holder
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import EngineError, VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.policy.problems import shown
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
    "intent", "create", "verify", "pending", "publish", "published",
    "sweep", "disable", "delete", "destroy", "done",
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
        listing: Listing | None = None,
        known: Known | None = None,
        carried: bool = False,
        trusted: bool = False,
        scheduled: bool = False,
        flush: bool = False,
        capabilities_checked: bool = False,
    ) -> Progress:
        """One pass: apply ``command`` (start it if idle and ``start``), go on as far as it can.

        ``listing``: the caller's list pass of the policy's account. ``known``: the record as
        the caller last knew it (else read); ``carried``: with observations not written yet;
        ``trusted``: it is what this process's own last pass left (or read, with no pending
        record beside an idle one), so nothing unrecorded can have happened since: the pass
        skips the reads that look for a crash's traces (a stale pending record at a start, an
        unrecorded publish).
        ``scheduled`` (the daemon's own passes): routine listings come only from ``listing``,
        observations the pass did not write are left to the caller (``Progress.known``,
        ``carried``; ``flush``: write them after all), and the change signal is not bumped.
        """
        command = command or Command()
        store = self.store(policy)
        if start and not capabilities_checked:  # first, so a weak token gets the full list
            check_capabilities(policy, self.kv_for(policy.vault.kv_mount), store)

        def one_pass(p: Pass) -> Progress:
            # A rotation follows its own policy: if its account differs, list that one.
            if p.policy.account == policy.account:
                p.shared = listing
            p.may_list = not scheduled or p.policy.account != policy.account
            p.trusted = trusted and known is not None
            return run_pass(p)

        return self._in_session(
            policy,
            store,
            one_pass,
            command=command,
            start=start,
            known=known,
            carried=carried,
            scheduled=scheduled,
            persist=not scheduled or flush,
        )

    def stall(
        self, policy: KeyPolicy, reason: str, detail: str, *, scheduled: bool = False
    ) -> Progress:
        """Record a stall on the rotation in flight (e.g. retries exhausted); no-op if idle."""

        def record_stall(p: Pass) -> Progress:
            rotation = p.record.rotation
            if rotation is None or rotation.stalled is not None:
                return p.progress()
            return stall(p, reason, detail)

        return self._in_session(
            policy, self.store(policy), record_stall, scheduled=scheduled, persist=True
        )

    def _in_session(
        self,
        policy: KeyPolicy,
        store: StateStore,
        act: Callable[[Pass], Progress],
        *,
        command: Command | None = None,
        start: bool = False,
        known: Known | None = None,
        carried: bool = False,
        scheduled: bool = False,
        persist: bool = True,
    ) -> Progress:
        session = Session.open(
            store,
            policy.env,
            policy.name,
            holder=self.holder,
            clock=self.clock,
            ttl=self.lease_ttl,
            known=known,
            carried=carried,
        )
        try:
            one_pass = self._pass(session, store, policy, command or Command(), start)
            progress = act(one_pass)
        except (Exception, KeyboardInterrupt, SystemExit):
            _release_quietly(session, persist=persist)
            self._signal(store, session, scheduled)
            raise
        one_pass.note_dialect()
        carried = session.release(persist=persist)
        self._signal(store, session, scheduled)
        return replace(progress, known=session.known, carried=carried, wrote=session.writes > 0)

    def _signal(self, store: StateStore, session: Session, scheduled: bool) -> None:
        """A pass on an operator's behalf that wrote the record bumps the change signal."""
        if not scheduled and session.writes:
            ref = session.record.ref
            note_change(store.kv, store.prefix, ref, at=self.clock())

    def _pass(
        self, session: Session, store: StateStore, policy: KeyPolicy, command: Command, start: bool
    ) -> Pass:
        """The parts of one pass; a rotation in flight follows the policy it started with,
        if it names the same provider host and management key as the key's policy (anyone
        with write on the state prefix could otherwise have a management key sent elsewhere)."""
        rotation = session.record.rotation
        own = KeyPolicy.from_dict(dict(rotation.policy)) if rotation else policy
        if (why := _other_provider(own, policy)) is not None:
            raise EngineError(
                f"{policy.ref}: the rotation in flight names {why}, not its policy's: refused "
                "(a forged state record?). If the policy changed mid-rotation, put its provider "
                "back until the rotation ends"
            )
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


def _other_provider(own: KeyPolicy, policy: KeyPolicy) -> str | None:
    """What of the provider a rotation's stored policy names differently from the key's."""
    host = (urlsplit(own.provider.base_url).hostname or "").lower()
    if host != (urlsplit(policy.provider.base_url).hostname or "").lower():
        return f"provider host {shown(host)}"
    mine, theirs = own.account, policy.account
    if (mine.kv_mount, mine.management_key_path) != (theirs.kv_mount, theirs.management_key_path):
        return f"management key {shown(mine.kv_mount + '/' + mine.management_key_path)}"
    return None


def _release_quietly(session: Session, *, persist: bool) -> None:
    """Give the lease back after a failed pass; if that fails too, it simply expires."""
    try:
        session.release(persist=persist)
    except VaultRotatorError as exc:
        log.warning("could not release the lease; it will expire", error=str(exc))
