"""Freezes: stop new rotations of an environment or a key. The truth lives in Vault.

One KV v2 secret per state prefix, ``<kv_mount>/<state_prefix>/control/frozen``, written only by
check-and-set through the :class:`~vault_rotator.ports.kv.KvStore` port. Stored form::

    {
      "schema": 1,
      "env": ["production"],                       # frozen environments, sorted
      "keys": ["staging/backend"],                 # frozen keys (ENV/NAME), sorted
      "by": {"production": {"by": "alice@host", "at": 1700000000.0, "reason": "incident 42"},
             "staging/backend": {...}}             # who froze each target, when, why
    }

A freeze stops new rotations only: a rotation in flight runs to its end (the daemon keeps
driving it; see :mod:`vault_rotator.daemon.due`). Freezing an environment and a key in it are
independent: unfreezing the environment leaves the key frozen. Freezing what is frozen, or
unfreezing what is not, writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vault_rotator.errors import CasConflictError, ConfigError, StoreError
from vault_rotator.ports.kv import KvStore

SCHEMA_VERSION = 1
MAX_CAS_ATTEMPTS = 5
_TARGET = re.compile(r"[a-z0-9-]+(?:/[a-z0-9-]+)?")


@dataclass(frozen=True, slots=True)
class FreezeInfo:
    """Who froze a target, when (epoch seconds) and why."""

    by: str
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FrozenSet:
    """The frozen environments and keys, as read from Vault at ``version`` (0: never written)."""

    envs: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    by: Mapping[str, FreezeInfo] = field(default_factory=dict)
    version: int = 0

    def covers(self, env: str, name: str) -> bool:
        """Whether ``env/name`` may not start a rotation (its environment or itself is frozen)."""
        return env in self.envs or f"{env}/{name}" in self.keys

    def why(self, env: str, name: str) -> FreezeInfo | None:
        """The freeze that covers ``env/name`` (the key's own first), or None."""
        for target in (f"{env}/{name}", env):
            if target in self.keys or target in self.envs:
                return self.by.get(target, FreezeInfo(by="", at=0.0))
        return None

    def __contains__(self, target: object) -> bool:
        return target in self.envs or target in self.keys

    def to_dict(self) -> dict[str, Any]:
        """The stored form (without the version)."""
        return {
            "schema": SCHEMA_VERSION,
            "env": sorted(self.envs),
            "keys": sorted(self.keys),
            "by": {
                target: {"by": info.by, "at": info.at, "reason": info.reason}
                for target, info in sorted(self.by.items())
            },
        }


def frozen_path(state_prefix: str) -> str:
    """Where the freezes of a state prefix live (relative to the KV mount)."""
    return f"{state_prefix.strip('/')}/control/frozen"


def parse_target(target: str) -> str:
    """``ENV`` or ``ENV/NAME``, checked; ConfigError otherwise."""
    if not _TARGET.fullmatch(target):
        raise ConfigError(f"expected ENV or ENV/NAME ([a-z0-9-]+), got {target!r}")
    return target


def frozen(kv: KvStore, state_prefix: str) -> FrozenSet:
    """The current freezes (an empty set when none was ever written)."""
    path = frozen_path(state_prefix)
    current = kv.read(path)
    if current is None or current.deleted:
        return FrozenSet(version=0 if current is None else current.version)
    return _parse(current.data, current.version, f"{kv.mount}/{path}")


def freeze(
    kv: KvStore, state_prefix: str, target: str, by: str, *, at: float, reason: str = ""
) -> FrozenSet:
    """Freeze ``target`` (``ENV`` or ``ENV/NAME``); return the freezes now in force."""
    target = parse_target(target)
    info = FreezeInfo(by=by, at=at, reason=reason)

    def add(current: FrozenSet) -> FrozenSet | None:
        if target in current:
            return None
        envs, keys = _split(target)
        return FrozenSet(
            envs=current.envs | envs,
            keys=current.keys | keys,
            by={**current.by, target: info},
            version=current.version,
        )

    return _update(kv, state_prefix, add)


def unfreeze(kv: KvStore, state_prefix: str, target: str) -> FrozenSet:
    """Lift the freeze of ``target`` (no-op if it is not frozen); return what stays frozen."""
    target = parse_target(target)

    def remove(current: FrozenSet) -> FrozenSet | None:
        if target not in current:
            return None
        envs, keys = _split(target)
        return FrozenSet(
            envs=current.envs - envs,
            keys=current.keys - keys,
            by={t: i for t, i in current.by.items() if t != target},
            version=current.version,
        )

    return _update(kv, state_prefix, remove)


def _split(target: str) -> tuple[frozenset[str], frozenset[str]]:
    """(environments, keys) named by a target."""
    if "/" in target:
        return frozenset(), frozenset({target})
    return frozenset({target}), frozenset()


def _update(
    kv: KvStore, state_prefix: str, change: Callable[[FrozenSet], FrozenSet | None]
) -> FrozenSet:
    """Read, change, write by check-and-set; re-read and retry when another writer won."""
    path = frozen_path(state_prefix)
    for _ in range(MAX_CAS_ATTEMPTS):
        current = frozen(kv, state_prefix)
        changed = change(current)
        if changed is None:
            return current
        try:
            version = kv.write(path, changed.to_dict(), cas=current.version)
        except CasConflictError:
            continue
        return FrozenSet(envs=changed.envs, keys=changed.keys, by=changed.by, version=version)
    raise CasConflictError(
        f"{kv.mount}/{path} kept changing under {MAX_CAS_ATTEMPTS} check-and-set attempts"
    )


def _parse(data: Mapping[str, Any], version: int, where: str) -> FrozenSet:
    """The stored form back into a FrozenSet; StoreError naming ``where`` if malformed."""
    if data.get("schema") != SCHEMA_VERSION:
        raise StoreError(
            f"freeze record at {where} has schema {data.get('schema')!r}; "
            f"this vault-rotator reads {SCHEMA_VERSION}"
        )
    try:
        envs = frozenset(_strings(data.get("env", [])))
        keys = frozenset(_strings(data.get("keys", [])))
        by = {
            str(target): FreezeInfo(
                by=str(info["by"]), at=float(info["at"]), reason=str(info.get("reason", ""))
            )
            for target, info in dict(data.get("by", {})).items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"freeze record at {where} is malformed ({exc})") from exc
    return FrozenSet(envs=envs, keys=keys, by=by, version=version)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return list(value)
