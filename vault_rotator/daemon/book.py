"""The daemon's picture of one provider account's keys, so that a poll costs what its work costs.

For each key the book keeps the state record as last read or written (with its version), what a
scheduled pass observed but did not write (``carried``), and, for an idle key, when it is next
worth a look (``check_at``: when it falls due, from :mod:`.due`). A poll of an account where
nothing is in flight and nothing is due reads one small record per state prefix and nothing
else. How the book learns of what other processes did:

* **at start and after a reload**: every record of the account is read (in parallel);
* **the change signal** (:mod:`vault_rotator.engine.changes`, ``<state_prefix>/changes``): read
  once per poll per state prefix; the records it names are read again (all of the prefix's when
  more changed than it remembers);
* **a slow full re-read** as a safety net (a bump that never came: a crashed CLI, a token without
  the path, a second daemon): every poll re-reads a slice, so every record is read again within
  :data:`FULL_REREAD_S`; each time round, the book also looks for stale pending records and for
  rotations in flight of keys no longer in the policies;
* **after each pass of its own**: the record the pass left (no read);
* a pass that found the record changed under it marks the entry ``stale``: read again first.

What a pass observed but did not write (pickup seen, a use mark that moved) stays in the book
and rides on the rotation's next write; if none comes within :data:`OBSERVATION_FLUSH_S`, the
next pass writes it (lease-free). A daemon that dies loses at most that much observation, which
its successor sees again later: a later pickup or a later "quiet since" only waits longer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vault_rotator.engine.state import StateRecord
from vault_rotator.policy import Account, KeyPolicy

FULL_REREAD_S = 1800.0  # every record read again at least this often (safety net)
OBSERVATION_FLUSH_S = 300.0  # observations a pass did not write are written within this


@dataclass(frozen=True, slots=True)
class SecretSeen:
    """What the consumer secret said when the refresher last read it (``status`` shows it for
    a key the state record says nothing of: one vault-rotator never rotated)."""

    key_id: str | None
    rotated_at: str | None


@dataclass
class Entry:
    """One key as the daemon knows it."""

    policy: KeyPolicy
    record: StateRecord
    version: int
    in_policy: bool = True
    rotated_at: str | None = None  # the consumer secret's rotated_at (never-rotated keys only)
    written_at: float | None = None  # a never-rotated key's age basis (its key_age gauge)
    check_at: float = 0.0  # idle: when due() is next worth evaluating
    carried_since: float | None = None  # observations kept here, unwritten, since then
    stale: bool = False  # the record changed under a pass: read it again first
    trusted: bool = False  # as our own pass left it (or read, idle, no pending): see Engine
    unreadable: bool = False  # its last read failed (a failure of the key's, until read)
    secret: SecretSeen | None = None  # the consumer secret as last read (None: not read)

    @property
    def ref(self) -> str:
        return self.policy.ref

    @property
    def active(self) -> bool:
        """A rotation in flight that is not stalled: the daemon drives it."""
        rot = self.record.rotation
        return rot is not None and rot.stalled is None

    @property
    def where(self) -> tuple[str, str]:
        """(kv_mount, state_prefix) of the key's records."""
        return self.policy.vault.kv_mount, self.policy.vault.state_prefix

    def learned(self, record: StateRecord, version: int, *, carried: bool, now: float) -> None:
        """The record as a pass left it (``carried``: with observations not written yet)."""
        self.record, self.version, self.stale, self.trusted = record, version, False, True
        if not carried:
            self.carried_since = None
        elif self.carried_since is None:
            self.carried_since = now
        self.check_at = 0.0  # evaluate it again on the next poll

    def read(self, record: StateRecord, version: int) -> None:
        """The record as read from Vault (anything carried is dropped: Vault is the truth)."""
        self.learned(record, version, carried=False, now=0.0)
        self.trusted = False  # someone else may have written it (and left traces to look for)

    def must_flush(self, now: float) -> bool:
        """Carried observations old enough to be written with the next pass."""
        return self.carried_since is not None and now - self.carried_since >= OBSERVATION_FLUSH_S


@dataclass
class Book:
    """The keys of one account (those of its policies, and rotations outside them)."""

    account: Account
    keys: tuple[KeyPolicy, ...]  # the policies the book was built for
    entries: dict[str, Entry] = field(default_factory=dict)
    seen: dict[tuple[str, str], int] = field(default_factory=dict)  # change-signal versions
    cursor: int = 0  # where the rolling re-read goes on
    owed: float = 0.0  # re-reads owed to the round, carried over between polls
    loaded: bool = False
    missing: list[KeyPolicy] = field(default_factory=list)  # first read failed: read again
    generation: int = 0  # the daemon's policies the book was built for
    outside: list[tuple[str, str]] = field(default_factory=list)  # where else rotations of
    # this account may be in flight (an account that left the policies)
    flying: dict[str, Entry] = field(default_factory=dict)  # rotations in flight (incl. stalled)
    next_check: float = 0.0  # no idle key is worth a look before then
    stale: set[str] = field(default_factory=set)  # refs to read again first
    order: list[str] = field(default_factory=list)  # refs in the order the rolling read goes
    where: set[tuple[str, str]] = field(default_factory=set)  # (mount, prefix) of the entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def add(self, entry: Entry) -> None:
        if entry.ref not in self.entries:
            self.order.append(entry.ref)
        self.entries[entry.ref] = entry
        self.where.add(entry.where)
        self.note(entry)

    def mark_stale(self, entry: Entry) -> None:
        """Read ``entry``'s record again before its next pass."""
        entry.stale, entry.trusted = True, False
        self.stale.add(entry.ref)

    def note(self, entry: Entry) -> None:
        """Keep the book's indexes right after ``entry`` changed."""
        if entry.record.rotation is not None:
            self.flying[entry.ref] = entry
        else:
            self.flying.pop(entry.ref, None)
        self.next_check = min(self.next_check, entry.check_at)

    def active(self) -> list[Entry]:
        """Rotations in flight that are not stalled: the daemon drives them."""
        return [entry for entry in self.flying.values() if entry.active]

    def places(self) -> list[tuple[str, str]]:
        """(kv_mount, state_prefix) of every key, sorted."""
        return sorted(self.where | set(self.outside))

    def key_places(self) -> list[tuple[str, str]]:
        """(kv_mount, state_prefix) of the policies' keys and of ``outside``, sorted."""
        keys = {(k.vault.kv_mount, k.vault.state_prefix) for k in self.keys}
        return sorted(keys | set(self.outside))

    def in_place(self, where: tuple[str, str], refs: Iterable[str] | None = None) -> list[Entry]:
        """Entries under ``where`` (only those named in ``refs``, if given)."""
        if refs is None:
            return [e for e in self if e.where == where]
        named = (self.entries.get(ref) for ref in refs)
        return [e for e in named if e is not None and e.where == where]

    def rolling_slice(self, poll_interval: float) -> tuple[list[Entry], bool]:
        """The entries to read again this poll, and whether the round just completed.

        Sized so that every entry is read once per :data:`FULL_REREAD_S`.
        """
        refs = self.order
        if not refs:
            return [], False
        self.owed += len(refs) * poll_interval / FULL_REREAD_S
        share = math.floor(self.owed)
        self.owed -= share
        if share == 0:
            return [], False
        start = self.cursor % len(refs)
        picked = [self.entries[refs[(start + i) % len(refs)]] for i in range(min(share, len(refs)))]
        self.cursor = start + len(picked)
        wrapped = self.cursor >= len(refs)
        self.cursor %= len(refs)
        return picked, wrapped


def stamp_seconds(stamp: str | None) -> float | None:
    """An ISO 8601 time (no zone: UTC) as epoch seconds; None if absent or unreadable."""
    try:
        moment = datetime.fromisoformat(stamp or "")
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
