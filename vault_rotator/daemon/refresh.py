"""Keeping a :class:`~.book.Book` current: what is read from Vault on a poll, and when.

The rules are in :mod:`.book`'s docstring; this module does the reads. Each read of a key's
record is that key's alone: one that fails (denied, a newer schema, Vault down) is reported
against the key (``failed``), the entry is kept as it was (or left out, if it was never read)
and read again on the next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from vault_rotator.daemon.book import Book, Entry, SecretSeen, stamp_seconds
from vault_rotator.engine.changes import read_changes
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import ConfigError, VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)
Map = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]  # a (parallel) map


@dataclass
class Refreshed:
    """What a refresh found besides the records: keys to tidy, problems to report."""

    tidy: list[Entry] = field(default_factory=list)  # idle keys with a stale pending record
    failed: list[tuple[KeyPolicy, str]] = field(default_factory=list)  # (key, why)
    errors: list[str] = field(default_factory=list)  # not a key's: listing rotations, ...
    recovered: list[str] = field(default_factory=list)  # keys read again after a failure
    reads: int = 0  # records read


class Refresher:
    """Reads what a poll needs into a book: everything at first, then only what changed."""

    def __init__(self, kv_for: Callable[[str], KvStore], pmap: Map) -> None:
        self.kv_for = kv_for
        self.pmap = pmap

    def store(self, where: tuple[str, str]) -> StateStore:
        return StateStore(self.kv_for(where[0]), where[1])

    def refresh(self, book: Book, poll_interval: float) -> Refreshed:
        """Bring ``book`` up to date for this poll (see :mod:`.book`)."""
        found = Refreshed()
        if not book.loaded:
            self._load(book, found)
            return found
        if book.missing:  # keys whose first read failed
            self._load_missing(book, found)
        wanted = {ref: book.entries[ref] for ref in book.stale if ref in book.entries}
        book.stale.clear()
        for where in book.places():
            changed = self._changed(book, where, found)
            for entry in book.in_place(where, changed):
                wanted.setdefault(entry.ref, entry)
        picked, wrapped = book.rolling_slice(poll_interval)
        for entry in picked:
            wanted.setdefault(entry.ref, entry)
        self._reread(book, list(wanted.values()), found)
        if wrapped:  # once per round: what no signal announces
            self._look_around(book, found)
        return found

    def _load(self, book: Book, found: Refreshed) -> None:
        for where in book.key_places():
            try:
                book.seen[where] = read_changes(self.kv_for(where[0]), where[1]).version
            except VaultRotatorError as exc:
                found.errors.append(f"change signal under {where[0]}/{where[1]}: {exc}")
        book.missing = list(book.keys)
        self._load_missing(book, found)
        book.loaded = True
        self._look_around(book, found)

    def _load_missing(self, book: Book, found: Refreshed) -> None:
        missing, book.missing = book.missing, []
        for policy, result in zip(missing, self.pmap(self._read_new, missing), strict=True):
            if isinstance(result, Entry):
                book.add(result)
                found.recovered.append(policy.ref)
            else:
                found.failed.append((policy, result))
                book.missing.append(policy)
        found.reads += len(missing)

    def _read_new(self, policy: KeyPolicy) -> Entry | str:
        try:
            return self.read_entry(policy)
        except VaultRotatorError as exc:
            return str(exc)

    def read_entry(self, policy: KeyPolicy, *, in_policy: bool = True) -> Entry:
        """A key's record, and for a never-rotated idle key what its secret says of its age."""
        where = (policy.vault.kv_mount, policy.vault.state_prefix)
        record, version = self.store(where).read(policy.env, policy.name)
        entry = Entry(policy, record, version, in_policy=in_policy)
        self._secret_facts(entry)
        return entry

    def _secret_facts(self, entry: Entry) -> None:
        """``rotated_at`` and the age basis, read from the consumer secret only when the record
        has no rotation to count from (a key never rotated by vault-rotator); its ``key_id``
        too, kept for ``GET /v1/status`` (:mod:`.status_rows`)."""
        if entry.record.last_success_at is not None or entry.record.rotation is not None:
            entry.rotated_at = entry.written_at = None
            return
        if entry.rotated_at is not None or entry.written_at is not None:
            return  # read before; the record did not change that
        kv = self.kv_for(entry.policy.vault.kv_mount)
        secret = kv.read(entry.policy.secret_path)
        if secret is None or secret.deleted:
            return
        stamp = secret.data.get("rotated_at")
        entry.rotated_at = stamp if isinstance(stamp, str) else None
        key_id = secret.data.get("key_id")
        entry.secret = SecretSeen(key_id if isinstance(key_id, str) else None, entry.rotated_at)
        if entry.rotated_at is None:
            first = kv.read(entry.policy.secret_path, 1)
            entry.written_at = stamp_seconds(first.created_time if first else None)
        else:
            entry.written_at = stamp_seconds(entry.rotated_at)

    def _changed(self, book: Book, where: tuple[str, str], found: Refreshed) -> set[str] | None:
        """Refs the change signal names since the book last looked (None: re-read all)."""
        try:
            changes = read_changes(self.kv_for(where[0]), where[1])
        except VaultRotatorError as exc:
            found.errors.append(f"change signal under {where[0]}/{where[1]}: {exc}")
            return None
        refs = changes.since(book.seen.get(where, 0))
        book.seen[where] = changes.version
        return None if refs is None else set(refs)

    def _reread(self, book: Book, entries: list[Entry], found: Refreshed) -> None:
        def one(entry: Entry) -> str | None:
            try:
                record, version = self.store(entry.where).read(entry.policy.env, entry.policy.name)
                if entry.unreadable:
                    entry.unreadable = False
                    found.recovered.append(entry.ref)
                if version != entry.version or entry.stale:  # else: what we carry builds on it
                    entry.read(record, version)
                    self._secret_facts(entry)
                    book.note(entry)
            except VaultRotatorError as exc:
                return str(exc)
            return None

        for entry, error in zip(entries, self.pmap(one, entries), strict=True):
            if error is not None:
                book.mark_stale(entry)
                entry.unreadable = True
                found.failed.append((entry.policy, error))
        found.reads += len(entries)

    def _look_around(self, book: Book, found: Refreshed) -> None:
        """Rotations in flight of keys outside the policies, and stale pending records."""
        known = {(k.env, k.name) for k in book.keys}
        for where in book.key_places():
            self._outsiders(book, where, known, found)
            found.tidy += self._stale_pending(book, where)

    def _outsiders(
        self, book: Book, where: tuple[str, str], known: set[tuple[str, str]], found: Refreshed
    ) -> None:
        try:
            records = self.store(where).in_flight(skip=known)
        except VaultRotatorError as exc:
            found.errors.append(f"rotations outside the policies: {exc}")
            log.warning("cannot list rotations outside the policies", error=str(exc))
            return
        for record in records:
            policy = own_policy(record)
            if policy is None or policy.account != book.account:
                continue
            entry = book.entries.get(policy.ref)
            if entry is None or not entry.in_policy:
                store = self.store(where)
                _, version = store.read(record.env, record.name)
                book.add(Entry(policy, record, version, in_policy=False))

    def _stale_pending(self, book: Book, where: tuple[str, str]) -> list[Entry]:
        """Idle keys with a pending record (left by a crash after the rotation ended)."""
        store = self.store(where)
        stale: list[Entry] = []
        for env in sorted({e.policy.env for e in book.in_place(where)}):
            try:
                names = set(store.kv.list(f"{store.prefix}/pending/{env}"))
            except VaultRotatorError as exc:
                log.warning("cannot list pending records", env=env, error=str(exc))
                continue
            for entry in book.in_place(where):
                if entry.policy.env != env or entry.record.rotation is not None:
                    continue
                if entry.policy.name in names:
                    stale.append(entry)
                elif not entry.stale:  # idle with no pending: nothing to look for at its start
                    entry.trusted = True  # (a copy gone stale fails its first CAS write)
        return stale


def own_policy(record: StateRecord) -> KeyPolicy | None:
    """The policy a rotation in flight started with (None, logged, if it cannot be read)."""
    assert record.rotation is not None
    try:
        return KeyPolicy.from_dict(dict(record.rotation.policy))
    except ConfigError as exc:
        log.warning("cannot resume a rotation", key=record.ref, error=str(exc))
        return None
