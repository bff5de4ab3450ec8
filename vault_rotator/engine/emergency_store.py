"""Where environment-wide emergency requests live: one per environment, by check-and-set.

``<kv_mount>/<state_prefix>/emergency/<env>`` (:func:`~.emergency.emergency_path`) holds the
request's header, ``.../emergency/<env>/<id>/<n>`` its key shards (:mod:`.emergency_codec`),
through the :class:`~vault_rotator.ports.kv.KvStore` port. Writers (a CLI and a daemon may both
run rounds of one request) read, change and write by check-and-set, only the records that
changed, and read again when another won.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from vault_rotator.engine.emergency import EmergencyRequest, emergency_path, resumed
from vault_rotator.engine.emergency_codec import (
    as_stored,
    from_stored,
    header_doc,
    schema_of,
    shard_count,
    shard_doc,
    shard_names,
    shard_path,
)
from vault_rotator.errors import CasConflictError, StoreError
from vault_rotator.policy.problems import shown
from vault_rotator.ports.kv import KvStore

MAX_CAS_ATTEMPTS = 5


class EmergencyStore:
    """Reads and writes the requests of one KV mount and state prefix, by check-and-set."""

    def __init__(self, kv: KvStore, prefix: str) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")
        # env -> the request as this store last read or wrote it (sharded requests only). A
        # request's header is written at every change, after its shards, so while the header
        # keeps the version read (or written) then, the shards need not be read and decoded
        # again (a round's save right after its plan's read; the next tick's plan after its
        # save). A write first drops it: a writer that crashed between its shards and its
        # header left a shard changed under the same header, and a write on the shard
        # versions known conflicts, then reads every shard. A write that succeeded keeps what
        # it saved, as reading it back gives it (:func:`as_stored`).
        self._known: dict[str, EmergencyRequest] = {}

    def where(self, env: str) -> str:
        return f"{self.kv.mount}/{emergency_path(self.prefix, env)}"

    def read(self, env: str) -> EmergencyRequest | None:
        """The environment's current request, or None when there is none."""
        return self._read(env)[0]

    def _read(self, env: str) -> tuple[EmergencyRequest | None, int]:
        path, where = emergency_path(self.prefix, env), self.where(env)
        got = self.kv.read(path)
        if got is None or got.deleted:
            self._known.pop(env, None)
            return None, 0 if got is None else got.version
        known = self._known.get(env)
        if known is not None and known.version == got.version:
            return known, got.version
        schema = schema_of(got.data, where)  # a newer one is refused first, as such
        _check_place(got.data, env, where)  # before its id or env become a path
        if schema == 1:
            return EmergencyRequest.from_dict(got.data, where, got.version), got.version
        request_id = str(got.data.get("id"))
        data: list[Mapping[str, Any] | None] = []
        versions: list[int] = []
        for index in range(shard_count(got.data, where)):  # at most MAX_SHARDS reads
            shard = self.kv.read(shard_path(path, request_id, index))
            versions.append(0 if shard is None else shard.version)
            data.append(None if shard is None or shard.deleted else shard.data)
            if data[-1] is None:
                break  # the first one missing says the request is unreadable: read no further
        request = from_stored(got.data, data, where, got.version)
        request = request.evolve(shard_versions=tuple(versions))
        if all(d is not None for d in data):
            self._known[env] = request
        return request, got.version

    def _write(
        self, env: str, current: EmergencyRequest | None, version: int, wanted: EmergencyRequest
    ) -> EmergencyRequest:
        """Save the shards that changed, then the header if it changed (CasConflictError if
        another writer got in first)."""
        path = emergency_path(self.prefix, env)
        same = current is not None and current.id == wanted.id and bool(current.shard_versions)
        before = shard_names(current) if same and current is not None else []
        versions: list[int] = []
        for index, names in enumerate(shard_names(wanted)):
            kept = index < len(before) and before[index] == names
            if kept and current is not None and _same_shard(current, wanted, index, names):
                versions.append(current.shard_versions[index])
                continue
            doc = shard_doc(wanted, index, names)
            where = shard_path(path, wanted.id, index)
            if same and current is not None:
                cas = current.shard_versions[index]
            elif current is not None and current.id == wanted.id:  # a schema-1 request's
                got = self.kv.read(where)  # first shards (left by an upgrade that lost?)
                cas = 0 if got is None else got.version
            else:
                cas = 0  # a new request's
            versions.append(self.kv.write(where, doc, cas=cas))
        # The header is written at every change: its version is the request's, so a writer
        # that read before another's change always learns of it (and re-applies its own).
        version = self.kv.write(path, header_doc(wanted), cas=version)
        saved = as_stored(wanted).evolve(version=version, shard_versions=tuple(versions))
        self._known[env] = saved  # as a read would decode it: no read of the shards next
        return saved

    def update(
        self,
        env: str,
        change: Callable[[EmergencyRequest | None], EmergencyRequest | None],
    ) -> EmergencyRequest | None:
        """Read, change, write by check-and-set; read again and retry when another writer won.

        ``change`` returns the request to save, or None to leave the stored one as it is.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            current, version = self._read(env)
            wanted = change(current)
            if wanted is None:
                return current
            self._known.pop(env, None)  # a conflict below reads every shard again
            try:
                return self._write(env, current, version, wanted)
            except CasConflictError:
                continue
        raise CasConflictError(
            f"{self.where(env)} kept changing under {MAX_CAS_ATTEMPTS} check-and-set attempts"
        )

    def open(
        self,
        env: str,
        *,
        fresh: Callable[[], EmergencyRequest],
        revoke_old_now: bool,
        now: float,
    ) -> tuple[EmergencyRequest, bool]:
        """The environment's open request, resumed (True), or ``fresh()`` saved (False)."""
        was_open: list[bool] = []

        def change(current: EmergencyRequest | None) -> EmergencyRequest:
            was_open[:] = [current is not None and not current.complete]
            if current is not None and not current.complete:
                return resumed(current, revoke_old_now=revoke_old_now, now=now)
            return fresh()

        saved = self.update(env, change)
        assert saved is not None
        return saved, was_open[0]


def _same_shard(
    current: EmergencyRequest, wanted: EmergencyRequest, index: int, names: list[str]
) -> bool:
    """Whether shard ``index`` of ``wanted`` (``names``: its keys, as the shard of
    ``current`` held them) stores what ``current``'s does: the same entries (a round
    changes a few keys: nearly all are the very same objects), else the same document."""
    theirs, ours = current.keys, wanted.keys
    if all(theirs[n] is ours[n] or theirs[n] == ours[n] for n in names):
        return True
    return shard_doc(current, index, names) == shard_doc(wanted, index, names)


REQUEST_ID = re.compile(r"[a-z0-9]{1,64}")  # new_rotation_id's alphabet


def _check_place(data: Mapping[str, Any], env: str, where: str) -> None:
    """A request names the environment of its path, and an id that is no path: anyone who
    may write the record could otherwise steer the rounds' saves (and its shards' reads)
    elsewhere, and the request's one webhook would never be sent."""
    if data.get("env") != env:
        raise StoreError(
            f"emergency request at {where} is malformed (env {shown(data.get('env'))} is not "
            "the environment of its path)"
        )
    request_id = data.get("id")
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise StoreError(
            f"emergency request at {where} is malformed (id {shown(request_id)} is not a "
            "request id: a-z and 0-9)"
        )
