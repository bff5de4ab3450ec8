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

**No lease is held forever** (:func:`judge`). Anyone with write on the state prefix can leave a
record that claims to be held for ever (``expires_at: 1e308``), one of a schema no replica
writes, or garbage. A replica therefore judges a record held by another by what *it* has seen
of it, not by the times it claims: it notes, on its own clock, when it first saw the record's
KV version and content (:class:`Seen`). A record that has stayed unchanged for longer than
:func:`takeover_after` (the larger of the local TTL and the term the record states,
``expires_at - renewed_at``, capped at :data:`TERM_CAP` local TTLs; the cap when it states no
readable term) has no holder renewing it: it is taken over, and the takeover is logged once. A
holder that ticks renews once less than half its TTL is left, and its renewal job runs every
third of it, so its record changes within five sixths of a TTL: only a record nobody renews
gets there. A lease of a newer schema that keeps renewing (its version keeps changing) is left
to the newer replica, as ``docs/upgrading.md`` promises. A record unchanged for longer than
:func:`renewed_within` (its stated term, or the local TTL when it states none or one beyond the
cap) is reported before that (:attr:`AccountLeases.unrenewed`), so the daemon can say the
account has no holder that ticks.

The fence is an integer from 0 to :data:`MAX_FENCE` (2**53 - 1, the largest every JSON reader
holds exactly); a record with any other fence is malformed. A taker writes the old fence plus
one, or 1 when the old one is unreadable or already :data:`MAX_FENCE`: the account lease's fence
only tells a holder that its lease changed hands (holder and fence are compared together, never
ordered), so starting again is safe, and a forged fence can neither crash nor overflow it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from vault_rotator.display import shown
from vault_rotator.errors import CasConflictError, StoreError, StorePermissionError
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

ACCOUNT_LEASE_SCHEMA = 1
TERM_CAP = 10  # local TTLs: a lease unchanged this long is taken over, whatever it says
MAX_FENCE = 2**53 - 1  # the largest integer every JSON reader holds exactly


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
                "the account to the newer one while it renews the lease"
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
    if not 0 <= value <= MAX_FENCE:
        raise ValueError(f"fence is not between 0 and {MAX_FENCE}")
    return value


def _number(value: Any) -> float:
    number = _finite(value)
    if number is None:
        raise TypeError("a time is not a finite number")
    return number


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, a boolean, or too large a one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past 1.8e308
        return None
    return number if math.isfinite(number) else None


# -- the takeover rule: pure, over what this replica has seen of a record ------------------------

NOT_RENEWED = "account lease not renewed; taken over"
NEWER_EXPIRED = "expired account lease of a newer vault-rotator taken"


def next_fence(value: Any) -> int:
    """The fence a taker writes over a record whose fence is ``value``: one above it when it is
    an integer from 0 to below :data:`MAX_FENCE`, else 1 (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_FENCE:
        return 1
    return value + 1


def stated_term(data: Mapping[str, Any]) -> float | None:
    """The term a record states, ``expires_at - renewed_at``; None when it states none readable."""
    expires, renewed = _finite(data.get("expires_at")), _finite(data.get("renewed_at"))
    if expires is None or renewed is None:
        return None
    term = expires - renewed
    return term if math.isfinite(term) else None


def takeover_after(data: Mapping[str, Any], ttl: float) -> float:
    """How long a record held by another may stay unchanged before it is taken over: the larger
    of the local TTL and its stated term, capped at :data:`TERM_CAP` TTLs (the cap when it
    states no term)."""
    term = stated_term(data)
    cap = TERM_CAP * ttl
    return cap if term is None else min(max(ttl, term), cap)


def renewed_within(data: Mapping[str, Any], ttl: float) -> float:
    """How long a holder that ticks may leave its record unchanged: its stated term, at least the
    local TTL; the local TTL when it states none, or one past the cap (no replica writes that)."""
    term = stated_term(data)
    return ttl if term is None or term > TERM_CAP * ttl else max(ttl, term)


@dataclass(frozen=True)
class Verdict:
    """What a replica does with a lease record it does not hold (:func:`judge`)."""

    take: bool
    fence: int = 0  # the fence written when taking it
    why: str | None = None  # a takeover worth a warning, logged once it is written
    problem: str | None = None  # why a record left alone cannot be read
    unrenewed: bool = False  # left alone, but nobody has renewed it within its term


def judge(
    data: Mapping[str, Any],
    where: str,
    *,
    holder: str,
    unchanged_for: float,
    now: float,
    ttl: float,
) -> Verdict:
    """Take over or leave a lease record this replica does not hold, from the record and how
    long this replica has seen it unchanged (by its own clock, never the record's)."""
    abandoned = unchanged_for > takeover_after(data, ttl)
    unrenewed = unchanged_for > renewed_within(data, ttl)
    try:
        lease = AccountLease.from_dict(data, where)
    except StoreError as exc:
        fence = next_fence(data.get("fence"))
        expires = _finite(data.get("expires_at"))
        if _newer(data) and expires is not None and expires <= now:
            return Verdict(take=True, fence=fence, why=NEWER_EXPIRED)
        if abandoned:
            return Verdict(take=True, fence=fence, why=NOT_RENEWED)
        return Verdict(take=False, problem=str(exc), unrenewed=unrenewed)
    fence = next_fence(lease.fence)
    if lease.holder == holder or lease.expires_at <= now:
        return Verdict(take=True, fence=fence)
    if abandoned:
        return Verdict(take=True, fence=fence, why=NOT_RENEWED)
    return Verdict(take=False, unrenewed=unrenewed)


@dataclass(frozen=True)
class Seen:
    """A lease record as this replica first saw it: its KV version, a digest of its content,
    and when (this replica's clock). Either changing means it was written again."""

    version: int
    digest: str
    since: float

    def again(self, version: int, data: Mapping[str, Any], now: float) -> Seen:
        """This observation if the record is unchanged, else a new one starting ``now``."""
        digest = _digest(data)
        if (version, digest) == (self.version, self.digest):
            return self
        return Seen(version, digest, now)


def _digest(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


# -- this replica's hold on an account ----------------------------------------------------------


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
        self.seen: dict[str, Seen] = {}  # records held by others, as first seen unchanged
        self.problem: str | None = None  # why we could not take it, when not merely held
        self.denied = False  # Vault denied the lease path: a Vault policy from before HA
        self.unrenewed = False  # the last hold() found a lease nobody renews (no holder ticks)
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
            self.unrenewed = False
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
            data, version = self._read(path)
        except StoreError as exc:
            return self._failed(path, exc)
        ours = mine is not None and data is not None and self._is(data, mine.lease.fence)
        if mine is not None and ours:
            verdict = Verdict(take=True, fence=mine.lease.fence)  # a renewal
        elif data is None:
            verdict = Verdict(take=True, fence=1)  # free: never written, or deleted
        else:
            verdict = self._judge(path, data, version, now)
        if not verdict.take:
            self.held.pop(path, None)
            self.problem = verdict.problem
            self.unrenewed = self.unrenewed or verdict.unrenewed
            return False
        if mine is not None and not ours:
            log.warning("account lease lost", account=self.label, path=path)
            self.held.pop(path, None)
        lease = AccountLease(self.label, self.holder, verdict.fence, now + self.ttl, now)
        if not self._write(path, lease, version, quiet=verdict.why is not None):
            return False
        seen = self.seen.pop(path, None)
        if verdict.why is not None and data is not None:  # once: the lease is ours from now
            log.warning(
                verdict.why,
                account=self.label,
                path=path,
                fence=lease.fence,
                unchanged_s=None if seen is None else round(now - seen.since),
                was_held_by=shown(str(data.get("holder"))),
            )
        return True

    def _is(self, data: Mapping[str, Any], fence: int) -> bool:
        """Whether ``data`` is the lease this replica wrote under ``fence``."""
        try:
            lease = AccountLease.from_dict(data, "")
        except StoreError:
            return False
        return (lease.holder, lease.fence) == (self.holder, fence)

    def _judge(self, path: str, data: Mapping[str, Any], version: int, now: float) -> Verdict:
        """:func:`judge` on a record held by another, as this replica has seen it over time."""
        seen = self.seen.get(path)
        seen = Seen(version, _digest(data), now) if seen is None else seen.again(version, data, now)
        self.seen[path] = seen
        return judge(
            data,
            f"{self.kv.mount}/{path}",
            holder=self.holder,
            unchanged_for=now - seen.since,
            now=now,
            ttl=self.ttl,
        )

    def _read(self, path: str) -> tuple[Mapping[str, Any] | None, int]:
        """The record at ``path`` (None: free) and the version to CAS against."""
        got = self.kv.read(path)
        version = 0 if got is None else got.version
        if got is not None and got.deleted:
            version = self.kv.current_version(path)
        if got is None or got.deleted or not got.data:
            return None, version
        return got.data, version

    def _write(self, path: str, lease: AccountLease, version: int, *, quiet: bool = False) -> bool:
        try:
            written = self.kv.write(path, lease.to_dict(), cas=version)
        except CasConflictError:
            self.held.pop(path, None)
            return False  # another replica wrote first
        except StoreError as exc:
            return self._failed(path, exc)
        if path not in self.held and not quiet:
            log.info("account lease taken", account=self.label, path=path, fence=lease.fence)
        self.held[path] = _Held(lease, written)
        return True

    def _failed(self, path: str, exc: StoreError) -> bool:
        """Vault refused a read or write: the lease is not ours, and says why."""
        self.held.pop(path, None)
        self.problem = str(exc)
        self.denied = isinstance(exc, StorePermissionError)
        return False

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
