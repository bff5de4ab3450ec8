"""State and pending records in Vault, and the lease that fences every provider write.

A process acts on a key only while it holds the lease inside the key's state record. A pass
*opens* a session on the record as read (or as its caller last knew it: the daemon keeps its
own copy) and checks that no other process holds a live lease; it takes the lease with its
**first write** (check-and-set against the version it opened, bumping the record's ``fence``),
not before: a pass that only observes and decides to wait writes nothing at all. Every later
save renews the lease by CAS against the version this session last wrote, so a process whose
lease was taken over fails its next save with :class:`LeaseLostError` and stops. The lease is
given back with the pass's **last write** (the record saved with ``lease: null``), or handed
off (:attr:`~.state.Lease.pending_attempt`): the pass that creates a key saves "about to
create" with a lease that ends as soon as the pending record holds the new value, so saving
the value ends its turn. Leases are never held between polls.

Before each provider write the session records ``provider_write`` ("about to <action> on
<target>") and makes sure the lease outlives the call's worst case, retries and backoff
included. Every other side effect (a consumer-secret or pending write, a destroy, labels) is
made under the lease too (:meth:`Session.hold`). What a pass observed without acting (use
marks, pickup) is *staged*: written with its next write, or, when the pass ends without one,
by a lease-free CAS write (``persist``), or kept by the caller for its next pass (the daemon:
see :mod:`vault_rotator.daemon.book`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Collection

import structlog

from vault_rotator.engine.state import Lease, Pending, ProviderWrite, StateRecord
from vault_rotator.errors import (
    CasConflictError,
    EngineError,
    LeaseHeldError,
    LeaseLostError,
    StoreError,
    StorePermissionError,
)
from vault_rotator.policy.fields import is_name
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

LEASE_MARGIN_S = 2.0  # renew when the lease has less than (call budget + this) left
# hold() renews when less than this is left: one Vault write's worst case (its 10 s
# request timeout) plus the margin, so the write lands while the lease is still ours.
FENCE_MARGIN_S = 12.0


def default_holder() -> str:
    """A lease holder id: host, pid and a random suffix (unique per process start)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StateStore:
    """Reads and writes a mount's state and pending records under ``state_prefix``."""

    def __init__(self, kv: KvStore, prefix: str) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")

    def state_path(self, env: str, name: str) -> str:
        return f"{self.prefix}/state/{env}/{name}"

    def pending_path(self, env: str, name: str) -> str:
        return f"{self.prefix}/pending/{env}/{name}"

    def read(self, env: str, name: str) -> tuple[StateRecord, int]:
        """The record and its version (0 and a fresh idle record when none exists)."""
        path = self.state_path(env, name)
        got = self.kv.read(path)
        if got is None or got.deleted:
            return StateRecord.new(env, name), self.kv.current_version(path) if got else 0
        return StateRecord.from_dict(got.data, f"{self.kv.mount}/{path}"), got.version

    def read_pending(self, env: str, name: str) -> tuple[Pending | None, int]:
        path = self.pending_path(env, name)
        got = self.kv.read(path)
        if got is None or got.deleted:
            return None, self.kv.current_version(path) if got else 0
        return Pending.from_dict(got.data, f"{self.kv.mount}/{path}"), got.version

    def write_pending(self, env: str, name: str, pending: Pending, cas: int) -> None:
        self.kv.write(self.pending_path(env, name), pending.to_dict(), cas=cas)

    def destroy_pending(self, env: str, name: str) -> None:
        self.kv.destroy(self.pending_path(env, name))

    def list_records(self, skipped: list[str] | None = None) -> list[tuple[str, str]]:
        """(env, name) of every state record under this prefix that this token may list.

        A folder the token may not list (an environment no policy of ours names, under a
        least-privilege Vault policy) is skipped with a warning, not an error, and named in
        ``skipped`` when given.
        """
        found: list[tuple[str, str]] = []
        for env in self.kv.list(f"{self.prefix}/state"):
            if env.endswith("/"):
                try:
                    names = self.kv.list(f"{self.prefix}/state/{env}")
                except StorePermissionError:
                    folder = f"{self.prefix}/state/{env}"
                    log.warning("state folder not readable; skipped", folder=folder)
                    if skipped is not None:
                        skipped.append(folder)
                    continue
                # names that are no key names are nobody's record (joined into paths: never)
                found.extend((env[:-1], n) for n in names if is_name(n) and is_name(env[:-1]))
        return found

    def in_flight(self, skip: Collection[tuple[str, str]] = ()) -> list[StateRecord]:
        """Records with a rotation in flight, except those named in ``skip`` (env, name).

        A record the token may not read (a key no longer in any policy, under a Vault policy
        generated for the current ones), or may read but not parse, is skipped with a warning.
        """
        records: list[StateRecord] = []
        for env, name in self.list_records():
            if (env, name) in skip:
                continue
            try:
                record = self.read(env, name)[0]
            except StorePermissionError:
                log.warning("state record not readable; skipped", key=f"{env}/{name}")
                continue
            except StoreError as exc:  # malformed (anyone with write may have made it)
                log.warning("state record unreadable; skipped", key=f"{env}/{name}",
                            error=str(exc))  # fmt: skip
                continue
            if record.in_flight:
                records.append(record)
        return records


Known = tuple[StateRecord, int]  # a record and the version it was read or written at


class Session:
    """One process's turn at one key's record, from open to release (see the module)."""

    def __init__(
        self,
        store: StateStore,
        record: StateRecord,
        version: int,
        *,
        holder: str,
        clock: Callable[[], float],
        ttl: float,
    ) -> None:
        self.store = store
        self.record = record  # as staged: what the next write saves
        self.written: StateRecord | None = record  # as stored at ``version`` (None: unknown)
        self.version = version
        self.holder = holder
        self.clock = clock
        self.ttl = ttl
        self.held = False  # the lease is ours, taken by a write of this pass
        self.released = False
        self.writes = 0  # state-record writes made by this session
        self.pending_seen: tuple[Pending | None, int] | None = None  # read while opening

    @classmethod
    def open(
        cls,
        store: StateStore,
        env: str,
        name: str,
        *,
        holder: str,
        clock: Callable[[], float],
        ttl: float,
        known: Known | None = None,
        carried: bool = False,
    ) -> Session:
        """A session on the record (read now, unless ``known``); LeaseHeldError if another
        process holds a live lease. Nothing is written: the first write takes the lease.

        ``carried``: ``known`` holds observations not written yet (they count as staged).
        """
        record, version = known if known is not None else store.read(env, name)
        session = cls(store, record, version, holder=holder, clock=clock, ttl=ttl)
        if known is not None and carried:
            session.written = None
        session._check_free()
        return session

    @classmethod
    def acquire(
        cls,
        store: StateStore,
        env: str,
        name: str,
        *,
        holder: str,
        clock: Callable[[], float],
        ttl: float,
    ) -> Session:
        """Take the record's lease now, by CAS, or raise LeaseHeldError naming the holder."""
        session = cls.open(store, env, name, holder=holder, clock=clock, ttl=ttl)
        session.hold()
        return session

    def _check_free(self) -> None:
        """Raise LeaseHeldError unless the record's lease is free (none, expired, handed off)."""
        record, now = self.record, self.clock()
        lease = record.lease
        # A live lease is never re-entered, not even by its own holder: one pass at a time.
        if lease is None or lease.expires_at <= now:
            return
        if lease.pending_attempt is not None and self._handed_off(lease.pending_attempt):
            return
        raise LeaseHeldError(
            f"{record.ref} is held by {lease.holder} for {lease.expires_at - now:.0f}s more"
        )

    def _handed_off(self, attempt: int) -> bool:
        """Does the pending record hold ``attempt`` of the rotation in flight (the hand-off)?"""
        rotation = self.record.rotation
        if rotation is None:
            return False
        self.pending_seen = self.store.read_pending(self.record.env, self.record.name)
        pending = self.pending_seen[0]
        return pending is not None and (pending.rotation_id, pending.attempt) == (
            rotation.id,
            attempt,
        )

    @property
    def expires_at(self) -> float:
        return self.record.lease.expires_at if self.held and self.record.lease else 0.0

    @property
    def dirty(self) -> bool:
        """Staged changes not written yet."""
        return self.record != self.written

    @property
    def known(self) -> Known:
        """The record as staged, and the version it builds on (for the caller's next pass)."""
        return self.record, self.version

    def _write(self, record: StateRecord) -> None:
        path = self.store.state_path(record.env, record.name)
        try:
            self.version = self.store.kv.write(path, record.to_dict(), cas=self.version)
        except CasConflictError as exc:
            if not self.held:
                raise LeaseHeldError(
                    f"{record.ref}: the state record changed since it was read (another "
                    "process acted on it); trying again on the next pass"
                ) from exc
            raise LeaseLostError(
                f"{record.ref}: the state record changed under us (lease lost); stopping"
            ) from exc
        self.writes += 1
        self.record = self.written = record

    def _leased(self, record: StateRecord, pending_attempt: int | None = None) -> StateRecord:
        """``record`` with our lease, renewed (a new fence if this pass does not hold it yet)."""
        fence = record.lease.fence if self.held and record.lease else record.fence + 1
        lease = Lease(self.holder, self.clock() + self.ttl, fence, pending_attempt)
        return record.evolve(fence=fence, lease=lease)

    def flush(self, *, pending_attempt: int | None = None) -> None:
        """Write what is staged now, taking the lease if this pass does not hold it yet."""
        self._write(self._leased(self.record, pending_attempt))
        self.held = True

    def hold(self) -> None:
        """Make sure the lease is ours (taken by a write) before a side effect, with a Vault
        write's worst case still left on it (renewed by CAS when it runs low). A process
        paused past its lease and taken over thus fails with LeaseLostError instead of
        writing after the new holder; one holding a fresh lease pays no I/O."""
        if not self.held:
            self.flush()
        elif self.expires_at - self.clock() < min(FENCE_MARGIN_S, self.ttl / 2):
            lease = self.record.lease  # renewed as it is (a hand-off it names stays named)
            self.flush(pending_attempt=lease.pending_attempt if lease else None)

    def save(self, record: StateRecord) -> None:
        """Write ``record`` now (taking or renewing the lease) by CAS against our last write."""
        self.record = record
        self.flush()

    def stage(self, record: StateRecord) -> None:
        """Keep ``record`` for the next write (observations ride on it, or on the release)."""
        self.record = record

    def save_and_release(self, record: StateRecord) -> None:
        """The pass's last write: ``record`` saved with the lease given back, in one write."""
        self.record = record
        self._write(record.evolve(lease=None))
        self.held = False
        self.released = True

    def handed_off(self) -> None:
        """The pending record now holds the attempt the lease named: the lease is given up.

        Any later side effect of this pass takes the lease again by CAS first.
        """
        lease = self.record.lease
        assert self.held
        assert lease is not None
        assert lease.pending_attempt is not None
        self.held = False

    def ensure(self, budget: float) -> None:
        """Make sure the lease is ours and outlives a call that may take ``budget`` seconds."""
        if budget + LEASE_MARGIN_S > self.ttl:
            raise EngineError(
                f"lease TTL {self.ttl:.0f}s is shorter than a provider call's worst case "
                f"{budget:.0f}s: raise VAULT_ROTATOR_LEASE_TTL"
            )
        if not self.held:
            self.flush()
        elif self.expires_at - self.clock() < budget + LEASE_MARGIN_S:
            lease = self.record.lease  # renewed as it is (a hand-off it names stays named: a
            self.flush(pending_attempt=lease.pending_attempt if lease else None)  # slow write)

    def before_provider_write(
        self, action: str, target: str, budget: float, *, hand_off_at: int | None = None
    ) -> None:
        """Record "about to <action> on <target>" with our fence, then check the lease.

        ``hand_off_at``: the lease ends once the pending record holds that attempt (a create).
        """
        fence = self.record.lease.fence if self.held and self.record.lease else None
        fence = fence if fence is not None else self.record.fence + 1
        write = ProviderWrite(action, target, fence, self.clock())
        self.record = self.record.evolve(provider_write=write)
        self.flush(pending_attempt=hand_off_at)
        self.ensure(budget)

    def sleep_until(self, deadline: float, sleep: Callable[[float], None]) -> None:
        """Wait until ``deadline`` on our clock, renewing the lease as it runs down."""
        step = max(self.ttl / 3, 0.05)
        while (left := deadline - self.clock()) > 0:
            self.ensure(step)  # the lease must outlive the sleep that follows
            sleep(min(left, step))

    def release(self, *, persist: bool = True) -> bool:
        """End the pass: give the lease back with what is staged (one write), or, without the
        lease, write what is staged lease-free by CAS (``persist``) or leave it to the caller.

        Returns True when staged changes are left unwritten (the caller keeps them).
        """
        if self.released:
            return False
        self.released = True
        if self.held:
            self._write(self.record.evolve(lease=None))
            self.held = False
            return False
        if not self.dirty:
            return False
        if not persist:
            return True
        self._write(self.record.evolve(lease=None))
        return False
