"""The emulator's key store: thread-safe, ordered for paging, never holding a key value.

Each key keeps the SHA-256 of its value (to authenticate inference calls, also after a restart)
and its HMAC fingerprint (to report); the plaintext exists only in the create answer.
Deleted keys stay in the store (for :meth:`KeyStore.all_keys` and the inference log) but leave
the listing indexes and get 404 on every management route.

Listing order is newest first by ``(created_at, seq)``. Two sorted lists of those pairs (all
non-deleted keys, and the enabled subset) give any page by bisection and slicing, without a
sort per request. A page cursor is the pair of the last key shown, so pages stay stable while
keys are created.

Persisted form (``dump``/``load``), version 1::

    {"version": 1, "dialect": "a", "seq": 3,
     "keys": [{"id", "seq", "name", "label", "value_sha256", "value_fingerprint",
               "created_at", "updated_at", "disabled", "deleted_at", "allowed_providers",
               "allowed_models", "spending_limit", "limit_reset", "expires_at",
               "meter": {"true": {...}, "seen": {...}, "pending": [[at, cost, pt, ct], ...]}}]}
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vault_rotator.emulator.clock import Clock, floor_to, iso_or_none
from vault_rotator.emulator.model import (
    KeyView,
    NewKey,
    label_of,
    list_or_none,
    new_id,
    new_value,
    value_hash,
)
from vault_rotator.emulator.usage import Meter, Use
from vault_rotator.secret import fingerprint

FORMAT_VERSION = 1
Order = tuple[float, int]


class UnknownKeyError(LookupError):
    """No live key has this id."""


@dataclass(slots=True)
class KeyState:
    """Everything the store knows about one key."""

    id: str
    seq: int
    name: str
    label: str
    value_sha256: str
    value_fingerprint: str
    created_at: float
    updated_at: float
    allowed_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    spending_limit: float | None = None
    limit_reset: str | None = None
    expires_at: float | None = None
    disabled: bool = False
    deleted_at: float | None = None
    meter: Meter = field(default_factory=Meter)

    @property
    def order(self) -> Order:
        return (self.created_at, self.seq)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "meter"}
        data["meter"] = self.meter.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyState:
        fields = dict(data)
        meter = Meter.from_json(fields.pop("meter"))
        for name in ("allowed_providers", "allowed_models"):
            fields[name] = None if fields[name] is None else tuple(fields[name])
        return cls(**fields, meter=meter)


@dataclass(frozen=True, slots=True)
class Page:
    """One listing page, and where the next one starts (``None``: this is the last)."""

    keys: list[KeyView]
    next_after: Order | None


class KeyStore:
    """Keys by id and by value hash, with the ordered indexes listing needs. One lock."""

    def __init__(
        self,
        *,
        dialect: str,
        clock: Clock,
        seed: int = 0,
        usage_lag: float = 0.0,
        granularity: float = 0.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._dialect = dialect
        self._clock = clock
        self._seed = seed
        self._lag = usage_lag
        self._granularity = granularity
        self._on_change = on_change
        self._lock = threading.Lock()
        # Seeded for reproducible tests: emulator values guard nothing real.
        self._rng = random.Random(f"ids:{seed}")  # noqa: S311
        self._seq = 0
        self._keys: dict[str, KeyState] = {}
        self._by_value: dict[str, KeyState] = {}
        self._by_order: dict[Order, KeyState] = {}
        self._listed: list[Order] = []  # every non-deleted key, oldest first
        self._enabled: list[Order] = []  # the non-disabled subset

    # -- management ---------------------------------------------------------------------

    def create(self, new: NewKey, *, created_at: float | None = None) -> tuple[KeyView, str]:
        """Store a new key; return its view and its value (the only time it exists)."""
        with self._lock:
            now = self._clock()
            key_id, value = self._fresh_id_and_value()
            self._seq += 1
            state = KeyState(
                id=key_id,
                seq=self._seq,
                name=new.name,
                label=new.label or label_of(value),
                value_sha256=value_hash(value),
                value_fingerprint=fingerprint(value),
                created_at=now if created_at is None else created_at,
                updated_at=now,
                allowed_providers=new.allowed_providers,
                allowed_models=new.allowed_models,
                spending_limit=new.spending_limit,
                limit_reset=new.limit_reset,
                expires_at=new.expires_at,
                disabled=new.disabled,
            )
            self._index(state)
            self._changed()
            return self._view(state, now), value

    def get(self, key_id: str) -> KeyView:
        with self._lock:
            return self._view(self._live(key_id), self._clock())

    def update(self, key_id: str, changes: Mapping[str, object]) -> KeyView:
        """Apply already-validated changes (attribute name -> new value) to a live key."""
        with self._lock:
            state = self._live(key_id)
            now = self._clock()
            self._unindex(state)
            for name, value in changes.items():
                setattr(state, name, value)
            state.updated_at = now
            self._index(state)
            self._changed()
            return self._view(state, now)

    def delete(self, key_id: str) -> None:
        with self._lock:
            state = self._live(key_id)
            self._unindex(state)
            state.deleted_at = self._clock()
            self._changed()

    def page(
        self, *, include_disabled: bool, size: int, offset: int = 0, after: Order | None = None
    ) -> Page:
        """Up to ``size`` keys newest first, after the cursor ``after`` and ``offset`` more."""
        with self._lock:
            orders = self._listed if include_disabled else self._enabled
            end = len(orders) if after is None else bisect.bisect_left(orders, after)
            end = max(0, end - offset)
            start = max(0, end - size)
            now = self._clock()
            views = [self._view(self._by_order[o], now) for o in reversed(orders[start:end])]
            return Page(views, orders[start] if start > 0 else None)

    # -- inference ------------------------------------------------------------------------

    def find(self, value: str) -> KeyView | None:
        """The key with this value, deleted ones included; ``None`` if never issued."""
        with self._lock:
            state = self._by_value.get(value_hash(value))
            return None if state is None else self._view(state, self._clock())

    def record_use(self, key_id: str, use: Use) -> None:
        with self._lock:
            self._keys[key_id].meter.record(use, now=self._clock(), lag=self._lag)
            self._changed()

    def spent(self, key_id: str) -> float:
        """True cost in the key's current ``limit_reset`` period (its lifetime if none)."""
        with self._lock:
            state = self._keys[key_id]
            return state.meter.true.spent(state.limit_reset, self._clock())

    # -- inspection and persistence -------------------------------------------------------

    def all_keys(self) -> list[dict[str, Any]]:
        """Every key ever created, oldest first, with true (unlagged) usage; no values."""
        with self._lock:
            return [_truth(state) for state in self._keys.values()]  # dicts keep seq order

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return self._dump()

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace the store's content by a :meth:`dump`; ValueError if it does not fit."""
        if data.get("version") != FORMAT_VERSION or data.get("dialect") != self._dialect:
            raise ValueError(
                f"saved state is version {data.get('version')!r} dialect "
                f"{data.get('dialect')!r}, expected version {FORMAT_VERSION} "
                f"dialect {self._dialect!r}"
            )
        with self._lock:
            self._clear()
            for item in data["keys"]:
                state = KeyState.from_json(item)
                self._keys[state.id] = state
                self._by_value[state.value_sha256] = state
                if state.deleted_at is None:
                    self._index(state)
            self._seq = int(data["seq"])
            self._rng.seed(f"ids:{self._seed}:{self._seq}")

    # -- internals (lock held) ------------------------------------------------------------

    def _clear(self) -> None:
        self._keys.clear()
        self._by_value.clear()
        self._by_order.clear()
        self._listed.clear()
        self._enabled.clear()

    def _fresh_id_and_value(self) -> tuple[str, str]:
        key_id = new_id(self._dialect, self._rng)
        while key_id in self._keys:
            key_id = new_id(self._dialect, self._rng)
        value = new_value(self._rng)
        while value_hash(value) in self._by_value:
            value = new_value(self._rng)
        return key_id, value

    def _index(self, state: KeyState) -> None:
        self._keys[state.id] = state
        self._by_value[state.value_sha256] = state
        self._by_order[state.order] = state
        bisect.insort(self._listed, state.order)
        if not state.disabled:
            bisect.insort(self._enabled, state.order)

    def _unindex(self, state: KeyState) -> None:
        del self._by_order[state.order]
        _remove(self._listed, state.order)
        if not state.disabled:
            _remove(self._enabled, state.order)

    def _live(self, key_id: str) -> KeyState:
        state = self._keys.get(key_id)
        if state is None or state.deleted_at is not None:
            raise UnknownKeyError(key_id)
        return state

    def _view(self, state: KeyState, now: float) -> KeyView:
        state.meter.settle(now=now, lag=self._lag)
        seen = state.meter.seen
        last_used = seen.last_used
        return KeyView(
            id=state.id,
            name=state.name,
            label=state.label,
            created_at=state.created_at,
            updated_at=state.updated_at,
            disabled=state.disabled,
            deleted=state.deleted_at is not None,
            allowed_providers=state.allowed_providers,
            allowed_models=state.allowed_models,
            spending_limit=state.spending_limit,
            limit_reset=state.limit_reset,
            expires_at=state.expires_at,
            last_used_at=None if last_used is None else floor_to(last_used, self._granularity),
            usage_cost=seen.cost,
            prompt_tokens=seen.prompt_tokens,
            completion_tokens=seen.completion_tokens,
            usage_daily=seen.spent("daily", now),
            usage_weekly=seen.spent("weekly", now),
            usage_monthly=seen.spent("monthly", now),
        )

    def _dump(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "dialect": self._dialect,
            "seq": self._seq,
            "keys": [state.to_json() for state in self._keys.values()],
        }

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._dump())


def _remove(orders: list[Order], order: Order) -> None:
    index = bisect.bisect_left(orders, order)
    assert orders[index] == order
    del orders[index]


def _truth(state: KeyState) -> dict[str, Any]:
    true = state.meter.true
    return {
        "id": state.id,
        "name": state.name,
        "label": state.label,
        "value_fingerprint": state.value_fingerprint,
        "deleted": state.deleted_at is not None,
        "deleted_at": iso_or_none(state.deleted_at),
        "disabled": state.disabled,
        "created_at": iso_or_none(state.created_at),
        "updated_at": iso_or_none(state.updated_at),
        "last_used_at": iso_or_none(true.last_used),
        "usage_cost": true.cost,
        "usage_tokens": true.prompt_tokens + true.completion_tokens,
        "allowed_providers": list_or_none(state.allowed_providers),
        "allowed_models": list_or_none(state.allowed_models),
        "spending_limit": state.spending_limit,
        "limit_reset": state.limit_reset,
        "expires_at": iso_or_none(state.expires_at),
    }
