"""Which replica ticks a provider account: a lease per account, held in Vault, fenced.

Several daemons may run behind one Vault (replicas). Each key's rotation is already safe
with any number of them: its state record's lease and fence let one process act at a time
(:mod:`.session`). What the account lease adds is that only one replica *ticks* an account —
lists its keys and advances its rotations — so the provider sees one list pass per poll, not
one per replica. The others serve probes, metrics, status and the control API.

Where it lives: an account's keys may sit in several policy files with different
``state_prefix``es (one KV mount: the mount is part of the account). The lease is a record
under *each* of them::

    <kv_mount>/<state_prefix>/accounts/<account id>

and a replica ticks the account only while it holds all of them. They are taken in sorted
order and given back when one is held by another, so two replicas whose configurations share
at least one prefix exclude each other even while a rolling configuration change has them
disagree about the others. ``<account id>`` is :attr:`Account.lease_id
<vault_rotator.policy.model.Account.lease_id>`, a hash of the base URL and the management key
path (no secret): the path stays the same when files are renamed.

Stored form (KV v2 data, written only by check-and-set)::

    {"schema": 1, "account": "https://api.example (secret/arouter/admin)",
     "holder": "host:pid:uuid", "fence": 12, "expires_at": 1700000030.0,
     "renewed_at": 1700000015.0}

``fence`` is bumped at each take-over. A replica renews when less than half the TTL is left
(one CAS write per prefix per half TTL, not one per poll) and reads the record again before
trusting a lease it thinks it holds once that point is reached, so a replica that was paused
past its lease finds it taken and steps back. The lease only decides who ticks; every Vault
write of a rotation is still fenced by the key's own lease, so even a replica that wrongly
believes it holds the account gets no write accepted on a key another replica acts on.

A newer schema is refused (:func:`refuse_newer` semantics): an older replica meeting a newer
replica's lease does not tick that account and says so; the newer replica ticks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from vault_rotator.errors import CasConflictError, StoreError, StorePermissionError
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

ACCOUNT_LEASE_SCHEMA = 1


def lease_path(prefix: str, account: str) -> str:
    """The lease record's path inside the KV mount."""
    return f"{prefix.strip('/')}/accounts/{account}"


@dataclass(frozen=True)
class AccountLease:
    """One stored account lease."""

    account: str
    holder: str
    fence: int
    expires_at: float
    renewed_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ACCOUNT_LEASE_SCHEMA,
            "account": self.account,
            "holder": self.holder,
            "fence": self.fence,
            "expires_at": self.expires_at,
            "renewed_at": self.renewed_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> AccountLease:
        schema = data.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise StoreError(f"account lease at {where} is malformed (no schema)")
        if schema > ACCOUNT_LEASE_SCHEMA:
            raise StoreError(
                f"account lease at {where} was written by a newer vault-rotator (schema "
                f"{schema}; this one reads up to {ACCOUNT_LEASE_SCHEMA}): this replica leaves "
                "the account to the newer one"
            )
        try:
            lease = cls(
                account=str(data["account"]),
                holder=str(data["holder"]),
                fence=_int(data["fence"]),
                expires_at=_number(data["expires_at"]),
                renewed_at=_number(data["renewed_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"account lease at {where} is malformed ({exc})") from exc
        return lease


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("fence is not an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("a time is not a number")
    return float(value)


@dataclass
class _Held:
    """What we know of one prefix's record: our lease and the version we wrote."""

    lease: AccountLease
    version: int


class AccountLeases:
    """This replica's hold on one account's leases (one per state prefix). Thread-safe: the
    tick, the renewal job and the readiness probe may ask at once."""

    def __init__(
        self,
        kv: KvStore,
        prefixes: Sequence[str],
        account: str,
        label: str,
        *,
        holder: str,
        clock: Callable[[], float],
        ttl: float,
    ) -> None:
        self.kv = kv
        self.paths = sorted({lease_path(p, account) for p in prefixes})
        self.label = label
        self.holder = holder
        self.clock = clock
        self.ttl = ttl
        self.held: dict[str, _Held] = {}
        self.problem: str | None = None  # why we could not take it, when not merely held
        self.denied = False  # Vault denied the lease path: a Vault policy from before HA
        self._lock = threading.RLock()

    @property
    def holds(self) -> bool:
        """True while every lease is ours by our clock (no I/O). No paths: never."""
        with self._lock:
            now = self.clock()
            return bool(self.paths) and all(
                (h := self.held.get(path)) is not None and h.lease.expires_at > now
                for path in self.paths
            )

    def hold(self) -> bool:
        """Take or keep every lease; True when this replica may tick the account now.

        Cheap while held: no I/O until half the TTL has run down, then one read and one CAS
        write per prefix. On any lease held by another replica, the ones taken are given back.
        """
        with self._lock:
            self.problem = None
            self.denied = False
            for path in self.paths:
                if not self._hold_one(path):
                    self.release()
                    return False
            return bool(self.paths)

    def renew(self) -> None:
        """Keep the leases this replica holds (the renewal job between ticks); take none."""
        with self._lock:
            if self.held and not self.hold():
                log.warning("account lease lost", account=self.label)

    def _hold_one(self, path: str) -> bool:
        now = self.clock()
        mine = self.held.get(path)
        if mine is not None and mine.lease.expires_at - now > self.ttl / 2:
            return True
        try:
            current, version = self._read(path, now)
        except StoreError as exc:
            self.held.pop(path, None)
            self.problem = str(exc)
            self.denied = isinstance(exc, StorePermissionError)
            return False
        if current is not None and current.holder != self.holder and current.expires_at > now:
            self.held.pop(path, None)
            return False
        ours = (
            mine is not None
            and current is not None
            and (current.holder, current.fence) == (self.holder, mine.lease.fence)
        )
        if mine is not None and not ours:
            log.warning("account lease lost", account=self.label, path=path)
            self.held.pop(path, None)
        fence = (current.fence if current is not None else 0) + (0 if ours else 1)
        lease = AccountLease(self.label, self.holder, fence, now + self.ttl, now)
        return self._write(path, lease, version)

    def _read(self, path: str, now: float) -> tuple[AccountLease | None, int]:
        """The lease at ``path`` (None: free) and the version to CAS against. A lease of a
        newer schema is respected while its ``expires_at`` lies ahead, then taken over."""
        got = self.kv.read(path)
        version = 0 if got is None else got.version
        if got is not None and got.deleted:
            version = self.kv.current_version(path)
        if got is None or got.deleted or not got.data:
            return None, version
        try:
            return AccountLease.from_dict(got.data, f"{self.kv.mount}/{path}"), version
        except StoreError:
            expires = got.data.get("expires_at")
            newer = _newer(got.data)
            if newer and isinstance(expires, int | float) and not isinstance(expires, bool):
                if expires > now:
                    raise
                log.warning("expired account lease of a newer vault-rotator taken", path=path)
                return None, version
            raise

    def _write(self, path: str, lease: AccountLease, version: int) -> bool:
        try:
            written = self.kv.write(path, lease.to_dict(), cas=version)
        except CasConflictError:
            self.held.pop(path, None)
            return False  # another replica wrote first
        except StoreError as exc:
            self.held.pop(path, None)
            self.problem = str(exc)
            self.denied = isinstance(exc, StorePermissionError)
            return False
        if path not in self.held:
            log.info("account lease taken", account=self.label, path=path, fence=lease.fence)
        self.held[path] = _Held(lease, written)
        return True

    def release(self) -> None:
        """Give back every lease we hold (best effort: an expired lease frees itself)."""
        with self._lock:
            for path, mine in list(self.held.items()):
                self.held.pop(path, None)
                freed = AccountLease(
                    self.label, self.holder, mine.lease.fence, self.clock(), mine.lease.renewed_at
                )
                try:
                    self.kv.write(path, freed.to_dict(), cas=mine.version)
                except StoreError:
                    log.info("account lease not given back; it expires", path=path)


def _newer(data: Mapping[str, Any]) -> bool:
    schema = data.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        return False
    return schema > ACCOUNT_LEASE_SCHEMA
