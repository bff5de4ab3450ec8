"""An in-memory KV v2 mount: the :class:`~vault_rotator.ports.kv.KvStore` port without a server.

:class:`MemoryKv` behaves as :class:`~vault_rotator.store.vault.VaultKv` does against OpenBao,
and ``tests/test_kv_contract.py`` runs one suite on both to keep it so. What it copies, as
checked on a real server:

- versions count from 1; ``cas`` must equal the current version (0 when the path has no
  version): a soft-deleted or destroyed latest version still counts, so ``cas=0`` then fails;
- a read of version ``None`` (or ``<= 0``) is the current one; a version above it is ``None``;
  a soft-deleted or destroyed version reads as ``deleted`` with empty data (as the port says;
  VaultKv raises on a destroyed one today, an expected failure in the suite);
- custom metadata belongs to the path: it is replaced whole, shown with every version, may be
  set before the first write, and obeys Vault's limits (64 keys, keys of 1-128 and values of
  1-512 UTF-8 bytes, printable characters);
- data round-trips as JSON through Go's float64: keys sorted, integral numbers below 1e21 come
  back as ints, larger integers lose precision as they do in Vault;
- slashes at either end or doubled do not change a path; ``list`` gives a folder's direct
  children, sorted, folders ending in ``/`` (a secret and a folder may share a name), and
  ``[]`` for a folder with nothing below it;
- ``destroy`` removes every version and the metadata; the path then starts again at version 1;
- a default listener's limits on a write's body (``{"data": ..., "options": {"cas": N}}``):
  more than :data:`MAX_JSON_STRINGS` strings (keys and string values, counted as OpenBao does)
  or more than :data:`MAX_REQUEST_BYTES` is refused, as
  :class:`~vault_rotator.errors.RecordTooLargeError`, and changes nothing;
- what the lean transport reads of one answer: a record (or a listing) larger than
  :data:`MAX_ANSWER_BYTES` is :class:`~vault_rotator.errors.AnswerTooLargeError`.

Failure modes for tests: ``sealed`` (every call raises :class:`StoreUnavailableError`), a Vault
``policy`` (full API path, or a prefix ending in ``*``, to capabilities) enforced per operation
as Vault's ACLs are (``create`` for a path without metadata, ``update`` for one with), a
``before`` hook called with (operation, path) ahead of each call, outside the lock, so a test
can raise any error or write as a racing process. Messages have VaultKv's shape.
:meth:`MemoryKv.restricted` is another token on the same server; :meth:`~MemoryKv.delete_versions`
and :meth:`~MemoryKv.destroy_versions` do what an operator does with ``vault kv delete/destroy``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault_rotator.errors import (
    AnswerTooLargeError,
    CasConflictError,
    RecordTooLargeError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.ports.kv import Versioned

POLICY_CAPABILITIES = frozenset({"create", "read", "update", "patch", "delete", "list", "sudo"})
_ROOT = frozenset({"root"})
_DENY = frozenset({"deny"})
_MAX_KEYS, _MAX_KEY_BYTES, _MAX_VALUE_BYTES = 64, 128, 512
MAX_JSON_STRINGS = 1000  # a default listener's max_request_json_strings (checked on OpenBao)
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # a default listener's max_request_size
MAX_ANSWER_BYTES = 2 * 1024 * 1024  # = store.transport.MAX_ANSWER_BYTES (the contract suite)
_CREATE_OR_UPDATE = None  # "create" for a path without metadata, else "update" (as Vault)


@dataclass
class _Version:
    data: dict[str, Any]
    created_time: str
    deleted: bool = False  # soft-deleted (the data is kept, as Vault keeps it) or destroyed
    destroyed: bool = False


@dataclass
class _Path:
    versions: list[_Version] = field(default_factory=list)  # version n at index n - 1
    custom_metadata: dict[str, str] = field(default_factory=dict)


class _Server:
    """What every token of one in-memory server shares: the data, the seal and the lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        self.paths: dict[str, _Path] = {}
        self.sealed = False
        self.clock = clock


class MemoryKv:
    """A KV v2 mount in memory, implementing :class:`~vault_rotator.ports.kv.KvStore`.

    ``policy`` None acts as a root token. ``clock`` (epoch seconds) stamps ``created_time``.
    """

    def __init__(
        self,
        mount: str = "secret",
        *,
        clock: Callable[[], float] = time.time,
        policy: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._mount = mount.strip("/")
        self._server = _Server(clock)
        self._policy = _checked_policy(policy)
        self.before: Callable[[str, str], None] | None = None
        self.write_count: collections.Counter[str] = collections.Counter()

    def restricted(self, policy: Mapping[str, Iterable[str]]) -> MemoryKv:
        """The same server and mount seen through another token holding only ``policy``."""
        other = copy.copy(self)
        other._policy = _checked_policy(policy)
        other.before = None
        other.write_count = collections.Counter()
        return other

    @property
    def mount(self) -> str:
        return self._mount

    @property
    def sealed(self) -> bool:
        return self._server.sealed

    @sealed.setter
    def sealed(self, value: bool) -> None:
        self._server.sealed = value

    # -- the port ------------------------------------------------------------------------------

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        with self._call("read", path, "data", frozenset({"read"})) as entry:
            if entry is None or not entry.versions:
                return None
            number = len(entry.versions) if version is None or version <= 0 else version
            if number > len(entry.versions):
                return None
            got = _versioned(entry, number)
            _answer_within_bounds(got.data, "GET", self._where(path))
            return got

    def current_version(self, path: str) -> int:
        with self._call("read metadata", path, "metadata", frozenset({"read"})) as entry:
            return len(entry.versions) if entry is not None else 0

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        stored = _as_vault_json(data)
        with self._call("write", path, "data", _CREATE_OR_UPDATE) as found:
            _within_listener_limits({"data": stored, "options": {"cas": cas}}, self._where(path))
            current = len(found.versions) if found is not None else 0
            if cas != current:
                raise CasConflictError(f"check-and-set conflict on {self._where(path)}")
            entry = self._server.paths.setdefault(_key(path), _Path())
            entry.versions.append(_Version(stored, _rfc3339(self._server.clock())))
            self.write_count[path] += 1
            return len(entry.versions)

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        problem = _metadata_problem(metadata)
        with self._call("update metadata", path, "metadata", _CREATE_OR_UPDATE):
            if problem:
                raise StoreError(
                    f"Vault rejected update metadata on {self._where(path)}: "
                    f"custom_metadata validation failed: {problem}"
                )
            entry = self._server.paths.setdefault(_key(path), _Path())
            entry.custom_metadata = dict(metadata)

    def destroy(self, path: str) -> None:
        with self._call("destroy", path, "metadata", frozenset({"delete"})):
            self._server.paths.pop(_key(path), None)
            self.write_count[path] += 1

    def list(self, prefix: str) -> Sequence[str]:
        with self._call("list", prefix, "metadata", frozenset({"list"})):
            base = _segments(prefix)
            children: set[str] = set()
            for key in self._server.paths:
                parts = key.split("/")
                if len(parts) > len(base) and parts[: len(base)] == base:
                    children.add(parts[len(base)] + ("/" if len(parts) > len(base) + 1 else ""))
            _answer_within_bounds(sorted(children), "LIST", self._where(prefix))
            return sorted(children)

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        where = ", ".join(paths)
        self._before("check capabilities", where)
        if self._server.sealed:
            raise StoreUnavailableError(f"Vault is sealed or down (check capabilities on {where})")
        if not paths:
            raise StoreError("Vault rejected check capabilities on : paths must be supplied")
        return {path: self._held(path) for path in paths}

    # -- test helpers: act as an operator with a root token, whatever the seal or policy --------

    def delete_versions(self, path: str, versions: Iterable[int] | None = None) -> None:
        """Soft-delete versions (default: the latest), as ``vault kv delete`` does."""
        self._mark(path, versions, destroy=False)

    def destroy_versions(self, path: str, versions: Iterable[int]) -> None:
        """Destroy versions for good, keeping the path's metadata (``vault kv destroy``)."""
        self._mark(path, versions, destroy=True)

    def _mark(self, path: str, versions: Iterable[int] | None, *, destroy: bool) -> None:
        with self._server.lock:
            entry = self._server.paths.get(_key(path))
            if entry is None or not entry.versions:
                return
            numbers = [len(entry.versions)] if versions is None else versions
            for number in numbers:
                if 0 < number <= len(entry.versions):
                    old = entry.versions[number - 1]
                    old.deleted = True
                    old.destroyed = old.destroyed or destroy
                    old.data = {} if old.destroyed else old.data

    # -- plumbing -----------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return f"{self._mount}/{path}"

    def _before(self, op: str, where: str) -> None:
        if self.before is not None:
            self.before(op, where)

    @contextlib.contextmanager
    def _call(
        self, op: str, path: str, kind: str, needs: frozenset[str] | None
    ) -> Iterator[_Path | None]:
        """The path's entry under the lock, once the hook ran and seal and policy allowed it."""
        self._before(op, path)
        with self._server.lock:
            yield self._check(op, path, kind, needs)

    def _check(self, op: str, path: str, kind: str, needs: frozenset[str] | None) -> _Path | None:
        if self._server.sealed:
            raise StoreUnavailableError(f"Vault is sealed or down ({op} on {self._where(path)})")
        entry = self._server.paths.get(_key(path))
        if needs is None:  # create if the path has no metadata yet, else update
            needs = frozenset({"update" if entry is not None else "create"})
        full = f"{self._mount}/{kind}/{_key(path)}"
        held = self._held(full)
        if op == "list" and held == _DENY:  # a rule on "<prefix>/" grants listing too
            held = self._held(full.rstrip("/") + "/")
        if held != _ROOT and ("deny" in held or not needs & held):
            raise StorePermissionError(
                f"Vault denied {op} on {self._where(path)}: permission denied "
                "(token revoked, expired or lacking the capability)"
            )
        return entry

    def _held(self, full_path: str) -> frozenset[str]:
        """This token's capabilities on a full API path: the exact rule, else the longest glob."""
        if self._policy is None:
            return _ROOT
        caps = self._policy.get(full_path)
        if caps is None:
            globs = [p for p in self._policy if p.endswith("*") and full_path.startswith(p[:-1])]
            caps = self._policy[max(globs, key=len)] if globs else _DENY
        return _DENY if "deny" in caps else caps


def _checked_policy(
    policy: Mapping[str, Iterable[str]] | None,
) -> dict[str, frozenset[str]] | None:
    if policy is None:
        return None
    checked = {path: frozenset(caps) for path, caps in policy.items()}
    for path, caps in checked.items():
        unknown = caps - POLICY_CAPABILITIES - _DENY
        if unknown or "+" in path or "*" in path[:-1]:
            raise ValueError(f"MemoryKv policy rule {path!r} {sorted(caps)}: not supported")
    return checked


def _segments(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _key(path: str) -> str:
    """Vault's spelling of a path: no leading, trailing or doubled slashes."""
    return "/".join(_segments(path))


def _versioned(entry: _Path, number: int) -> Versioned:
    version = entry.versions[number - 1]
    return Versioned(
        data={} if version.deleted else copy.deepcopy(version.data),
        version=number,
        created_time=version.created_time,
        deleted=version.deleted,
        custom_metadata=dict(entry.custom_metadata),
    )


def json_strings(value: Any) -> int:
    """Strings in a JSON value as a listener counts them: object keys and string values."""
    if isinstance(value, str):
        return 1
    if isinstance(value, Mapping):
        return sum(1 + json_strings(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(json_strings(item) for item in value)
    return 0


def _answer_within_bounds(answer: Any, method: str, where: str) -> None:
    """What the lean transport reads of one answer at most (``MAX_ANSWER_BYTES``)."""
    if len(json.dumps(answer).encode()) > MAX_ANSWER_BYTES:
        raise AnswerTooLargeError(
            f"Vault answered {method} {where} with more than "
            f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB: not read (no record the rotator writes "
            "is that large)"
        )


def _within_listener_limits(body: Mapping[str, Any], where: str) -> None:
    if json_strings(body) > MAX_JSON_STRINGS:
        raise RecordTooLargeError(
            f"Vault refused write on {where} as too large: refused JSON input due to high "
            "complexity: exceeded maximum number of strings"
        )
    if len(json.dumps(body).encode()) > MAX_REQUEST_BYTES:
        raise RecordTooLargeError(
            f"Vault refused write on {where} as too large: http: request body too large"
        )


def _as_vault_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as Vault hands it back: JSON with sorted keys, numbers through Go's float64."""
    text = json.dumps(dict(data), sort_keys=True, allow_nan=False)
    loaded: dict[str, Any] = json.loads(text, parse_int=_go_number, parse_float=_go_number)
    return loaded


def _go_number(text: str) -> int | float:
    number = float(text)
    return int(number) if number.is_integer() and abs(number) < 1e21 else number


def _metadata_problem(metadata: Mapping[str, str]) -> str:
    """Vault's first complaint about a custom metadata map, or "" when it takes it."""
    if len(metadata) > _MAX_KEYS:
        return f"payload must contain at most {_MAX_KEYS} keys, provided {len(metadata)}"
    for key, value in metadata.items():
        size, value_size = len(key.encode()), len(str(value).encode())
        if not 0 < size <= _MAX_KEY_BYTES:
            return f"length of key {key!r} is {size} but must be 0 < len(key) <= {_MAX_KEY_BYTES}"
        if not 0 < value_size <= _MAX_VALUE_BYTES:
            return (
                f"length of value for key {key!r} is {value_size} "
                f"but must be 0 < len(value) <= {_MAX_VALUE_BYTES}"
            )
        if not key.isprintable():
            return f"key {key!r} contains unprintable characters"
        if not str(value).isprintable():
            return f"value for key {key!r} contains unprintable characters"
    return ""


def _rfc3339(epoch: float) -> str:
    """Vault's ``created_time``: RFC 3339 in UTC, fraction without trailing zeros."""
    moment = datetime.fromtimestamp(epoch, UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
