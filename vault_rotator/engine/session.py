"""State and pending records in Vault, and the lease that fences every provider write.

A process acts on a key only while it holds the lease inside the key's state record. The lease
is taken by check-and-set (bumping the record's ``fence`` counter), renewed by every save, and
released between polls. It is taken over only once expired by the taker's clock. Every save is a
CAS against the version this session last wrote, so a process whose lease was taken over fails
its next save with :class:`LeaseLostError` and stops. Before each provider write the session
records ``provider_write`` ("about to <action> on <target>") and makes sure the lease outlives
the call's worst case, retries and backoff included.
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
    StorePermissionError,
)
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

LEASE_MARGIN_S = 2.0  # renew when the lease has less than (call budget + this) left
# check_fence renews when less than this is left: one Vault write's worst case (its 10 s
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
                found.extend((env[:-1], n) for n in names if "/" not in n)
        return found

    def in_flight(self, skip: Collection[tuple[str, str]] = ()) -> list[StateRecord]:
        """Records with a rotation in flight, except those named in ``skip`` (env, name).

        A record the token may not read (a key no longer in any policy, under a Vault policy
        generated for the current ones) is skipped with a warning.
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
            if record.in_flight:
                records.append(record)
        return records


class Session:
    """One process's hold on one key's record, from acquire to release."""

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
        self.record = record
        self.version = version
        self.holder = holder
        self.clock = clock
        self.ttl = ttl
        self.released = False

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
        """Take the record's lease by CAS, or raise LeaseHeldError naming the holder."""
        record, version = store.read(env, name)
        now = clock()
        lease = record.lease
        # A live lease is never re-entered, not even by its own holder: one pass at a time.
        if lease is not None and lease.expires_at > now:
            raise LeaseHeldError(
                f"{record.ref} is held by {lease.holder} for {lease.expires_at - now:.0f}s more"
            )
        fence = record.fence + 1
        taken = record.evolve(fence=fence, lease=Lease(holder, now + ttl, fence))
        session = cls(store, record, version, holder=holder, clock=clock, ttl=ttl)
        try:
            session._write(taken)
        except LeaseLostError as exc:
            raise LeaseHeldError(f"{record.ref}: another process took the lease first") from exc
        return session

    @property
    def expires_at(self) -> float:
        return self.record.lease.expires_at if self.record.lease else 0.0

    def _write(self, record: StateRecord) -> None:
        path = self.store.state_path(record.env, record.name)
        try:
            self.version = self.store.kv.write(path, record.to_dict(), cas=self.version)
        except CasConflictError as exc:
            raise LeaseLostError(
                f"{record.ref}: the state record changed under us (lease lost); stopping"
            ) from exc
        self.record = record

    def save(self, record: StateRecord) -> None:
        """Write ``record`` (renewing the lease) by CAS against our last write."""
        lease = record.lease or self.record.lease
        assert lease is not None, "save() needs a held lease"
        self._write(record.evolve(lease=Lease(self.holder, self.clock() + self.ttl, lease.fence)))

    def stage(self, record: StateRecord) -> None:
        """Keep ``record`` for the next write (observations ride on the lease's release)."""
        self.record = record

    def ensure(self, budget: float) -> None:
        """Make sure the lease outlives a call that may take ``budget`` seconds."""
        if budget + LEASE_MARGIN_S > self.ttl:
            raise EngineError(
                f"lease TTL {self.ttl:.0f}s is shorter than a provider call's worst case "
                f"{budget:.0f}s: raise VAULT_ROTATOR_LEASE_TTL"
            )
        if self.expires_at - self.clock() < budget + LEASE_MARGIN_S:
            self.save(self.record)

    def check_fence(self) -> None:
        """Before a Vault write to a path other than the state record (pending values, the
        consumer secret): renew the lease by CAS when it runs low. A process paused past its
        lease (and taken over) thus fails with LeaseLostError instead of writing after the new
        holder; one holding the lease for longer than a Vault write can take pays no I/O."""
        if self.expires_at - self.clock() < FENCE_MARGIN_S:
            self.save(self.record)

    def before_provider_write(self, action: str, target: str, budget: float) -> None:
        """Record "about to <action> on <target>" with our fence, then check the lease."""
        lease = self.record.lease
        assert lease is not None
        write = ProviderWrite(action, target, lease.fence, self.clock())
        self.save(self.record.evolve(provider_write=write))
        self.ensure(budget)

    def sleep_until(self, deadline: float, sleep: Callable[[float], None]) -> None:
        """Wait until ``deadline`` on our clock, renewing the lease as it runs down."""
        step = max(self.ttl / 3, 0.05)
        while (left := deadline - self.clock()) > 0:
            self.ensure(step)  # the lease must outlive the sleep that follows
            sleep(min(left, step))

    def release(self) -> None:
        """Give the lease back, keeping the record (best effort if it was lost)."""
        if self.released:
            return
        self.released = True
        self._write(self.record.evolve(lease=None))
