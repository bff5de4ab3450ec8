"""The daemon removes ack records of instances gone longer than the key's ``ack_retention``.

Once per :data:`SWEEP_EVERY_S` per key (the first tick after a start included), the key's ack
folder is read and every record whose last write (Vault's time) is older than ``ack_ttl +
ack_retention`` is destroyed (every version). A key whose acks cannot be read or removed (a
Vault policy without the ack rules, Vault down) is logged and tried again at the next sweep;
it never fails the tick.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable

import structlog

from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.acks import AckPolicy
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore

log = structlog.get_logger(__name__)

SWEEP_EVERY_S = 3600.0


class AckRetention:
    """When each key's acks were last swept, and the sweep."""

    def __init__(
        self, kv: Callable[[str], KvStore], every: float = SWEEP_EVERY_S, *, spread: bool = True
    ) -> None:
        self.kv = kv
        self.every = every
        self.spread = spread  # first sweeps spread over the hour, not all on the first tick
        self.last: dict[str, float] = {}
        # per tuple of keys swept (by id, the tuple held): its keys by their next sweep
        self._queues: dict[int, tuple[tuple[KeyPolicy, ...], list[tuple[float, int]]]] = {}

    def _first(self, ref: str, now: float) -> float:
        """A key first seen now is swept after a stable offset within the period (its name's
        hash), so 10,000 keys cost a few lists a second, not 10,000 on the first tick."""
        if not self.spread:
            return now - self.every
        offset = int(hashlib.sha256(ref.encode()).hexdigest()[:8], 16) % int(self.every)
        return now - self.every + offset

    def sweep(self, keys: Iterable[KeyPolicy], now: float) -> list[str]:
        """Sweep the keys whose turn it is; the ``ENV/NAME/instance`` of each record removed."""
        keys = keys if isinstance(keys, tuple) else tuple(keys)
        queue = self._queue(keys, now)
        removed: list[str] = []
        while queue and queue[0][0] <= now:
            _due, index = heapq.heappop(queue)
            policy = keys[index]
            self.last[policy.ref] = now
            heapq.heappush(queue, (now + self.every, index))
            removed += self._sweep_one(policy, now)
        return removed

    def _queue(self, keys: tuple[KeyPolicy, ...], now: float) -> list[tuple[float, int]]:
        """The tuple's keys by their next sweep (built on first use: a tick before the next
        turn costs nothing, not a loop over thousands of keys every poll)."""
        found = self._queues.get(id(keys))
        if found is not None and found[0] is keys:
            return found[1]
        queue = []
        for index, policy in enumerate(keys):
            last = self.last.get(policy.ref)
            if last is None:
                last = self.last[policy.ref] = self._first(policy.ref, now)
            queue.append((last + self.every, index))
        heapq.heapify(queue)
        if len(self._queues) >= 256:  # accounts x reloads: start afresh
            self._queues.clear()
        self._queues[id(keys)] = (keys, queue)
        return queue

    def _sweep_one(self, policy: KeyPolicy, now: float) -> list[str]:
        store = AckStore(self.kv(policy.vault.kv_mount), policy.vault.state_prefix)
        try:
            gone = store.remove_retired(policy.env, policy.name, AckPolicy.of(policy), now)
        except VaultRotatorError as exc:
            log.warning("ack records not swept", key=policy.ref, error=str(exc))
            return []
        except Exception as exc:  # a hostile record must not stop the tick: one line
            error = f"unexpected {type(exc).__name__}"
            log.warning("ack records not swept", key=policy.ref, error=error)
            return []
        return [f"{policy.ref}/{instance}" for instance in gone]
