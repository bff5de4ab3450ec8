"""The change signal: one small record per state prefix that says which keys' state records
other processes changed, so a daemon need not re-read every record on every poll.

Stored at ``<kv_mount>/<state_prefix>/changes`` (a contract: the rotator's Vault policy grants
it), written only by check-and-set. Its KV v2 version number counts the changes; its data names
the latest ones::

    {
      "schema": 1,
      "recent": [["production/backend", 1700000000.0], ...]   # ENV/NAME and when, newest
    }                                                          # last, at most RECENT of them

Who bumps it: every process that writes a key's state record **on an operator's behalf** (the
CLI verbs, the control API, a ``--wait`` driver), once per pass that wrote; a round that wrote
several keys' records at once (a CLI's environment-wide emergency) bumps once for all of them
(:func:`note_changes`), with an empty ``recent``: one version for many keys cannot name them in
this schema, so a reader that missed anything re-reads every record of the prefix. The daemon's
own scheduled passes do not: the daemon keeps what it wrote itself, and a bump per pass would
double its writes. A daemon reads the record once per poll; when the version moved by at most
``RECENT`` since it last looked, it re-reads only the records named, else all of them. A bump
that fails (a token without the path, a crash between the two writes) costs only freshness: the
daemon also re-reads every record once per ``FULL_REREAD_S`` (see
:mod:`vault_rotator.daemon.book`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from vault_rotator.errors import CasConflictError, StoreError, VaultRotatorError
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
RECENT = 64
MAX_CAS_ATTEMPTS = 5


def changes_path(state_prefix: str) -> str:
    """Where the change signal of a state prefix lives (relative to the KV mount)."""
    return f"{state_prefix.strip('/')}/changes"


@dataclass(frozen=True, slots=True)
class Changes:
    """The change signal as read: its version (0: never written) and the latest changes."""

    version: int = 0
    recent: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def since(self, seen: int) -> frozenset[str] | None:
        """The keys (``ENV/NAME``) changed after version ``seen``; None when more changed than
        the record remembers (re-read everything)."""
        moved = self.version - seen
        if moved <= 0:
            return frozenset()
        if moved > len(self.recent):
            return None
        return frozenset(ref for ref, _ in self.recent[-moved:])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "recent": [list(item) for item in self.recent]}


def read_changes(kv: KvStore, state_prefix: str) -> Changes:
    """The change signal of ``state_prefix`` (empty when never written); StoreError if it is
    not one this version can read (a newer schema or garbage: re-read everything instead)."""
    got = kv.read(changes_path(state_prefix))
    if got is None or got.deleted:
        return Changes(version=0 if got is None else got.version)
    return Changes(got.version, _parse(got.data, f"{kv.mount}/{changes_path(state_prefix)}"))


def note_change(kv: KvStore, state_prefix: str, ref: str, *, at: float) -> None:
    """Bump the change signal for ``ref`` (best effort: a failure is logged, not raised)."""
    try:
        _bump(kv, state_prefix, ref, at)
    except VaultRotatorError as exc:
        log.warning("could not signal a state change", key=ref, error=str(exc))


def note_changes(kv: KvStore, state_prefix: str, refs: Sequence[str], *, at: float) -> None:
    """Bump the change signal once for all of ``refs`` (best effort, as :func:`note_change`):
    one ref is named; several clear the list, so that every reader re-reads the prefix."""
    if len(refs) == 1:
        note_change(kv, state_prefix, refs[0], at=at)
    elif refs:
        try:
            _bump(kv, state_prefix, None, at)
        except VaultRotatorError as exc:
            log.warning("could not signal state changes", keys=len(refs), error=str(exc))


def _bump(kv: KvStore, state_prefix: str, ref: str | None, at: float) -> None:
    path = changes_path(state_prefix)
    for _ in range(MAX_CAS_ATTEMPTS):
        got = kv.read(path)
        version = got.version if got is not None else 0
        try:
            recent = _parse(got.data, path) if got is not None and not got.deleted else ()
        except StoreError:
            recent = ()  # unreadable (a newer writer?): start the list over
        kept = (*recent, (ref, at))[-RECENT:] if ref is not None else ()
        try:
            kv.write(path, Changes(version, kept).to_dict(), cas=version)
        except CasConflictError:
            continue
        return
    raise CasConflictError(f"{kv.mount}/{path} kept changing under {MAX_CAS_ATTEMPTS} attempts")


def _parse(data: Mapping[str, Any], where: str) -> tuple[tuple[str, float], ...]:
    if data.get("schema") != SCHEMA_VERSION:
        raise StoreError(f"change signal at {where} has schema {data.get('schema')!r:.20}")
    items = data.get("recent")
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise StoreError(f"change signal at {where} is malformed")
    try:
        return tuple((str(ref), float(at)) for ref, at in items)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"change signal at {where} is malformed ({exc})") from exc
