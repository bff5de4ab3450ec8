"""What the daemon derives from an account's tuple of key policies, once per tuple.

A tick runs every poll (every second at 1 s polls) over the account's keys, thousands of
them. Their environments, state prefixes and shortest poll do not change until a reload makes
new tuples, so each is derived once per tuple (:func:`roster`), not at every tick: at 10,000
keys those loops were most of an idle daemon's CPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vault_rotator.policy import KeyPolicy

DEFAULT_POLL_S = 30.0
_CACHED = 256  # tuples remembered (accounts x reloads); past it the cache starts afresh


@dataclass(frozen=True, slots=True)
class Roster:
    """Facts of one tuple of key policies."""

    keys: tuple[KeyPolicy, ...]  # held: its id() is the cache's key
    poll_s: float  # the shortest poll_interval (the account's tick period)
    envs: tuple[str, ...]  # sorted
    prefixes: tuple[str, ...]  # the state prefixes, sorted

    @classmethod
    def of(cls, keys: tuple[KeyPolicy, ...]) -> Roster:
        return cls(
            keys,
            min((k.provider.poll_interval_s for k in keys), default=DEFAULT_POLL_S),
            tuple(sorted({k.env for k in keys})),
            tuple(sorted({k.vault.state_prefix for k in keys})),
        )


_cache: dict[int, Roster] = {}
_lock = threading.Lock()


def roster(keys: tuple[KeyPolicy, ...]) -> Roster:
    """The tuple's facts, derived on first use (the same tuple object: no work)."""
    found = _cache.get(id(keys))
    if found is not None and found.keys is keys:
        return found
    made = Roster.of(keys)
    with _lock:
        if len(_cache) >= _CACHED:
            _cache.clear()
        _cache[id(keys)] = made
    return made
