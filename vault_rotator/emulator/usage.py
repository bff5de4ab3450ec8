"""Usage metering: what a key really did, and how much of it the provider shows yet.

Each inference call by a key is a :class:`Use`. A :class:`Meter` adds it at once to its
``true`` totals (what :meth:`Emulator.all_keys` reports) and queues it; a queued use joins the
``seen`` totals (what the API shows) once ``usage_lag`` seconds have passed. A call to
``GET /v1/models`` is a use with no cost: it moves ``last_used`` and nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vault_rotator.emulator.clock import RESETS, period_of


@dataclass(frozen=True, slots=True)
class Use:
    """One inference call: when, and what it cost."""

    at: float
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> list[float]:
        return [self.at, self.cost, self.prompt_tokens, self.completion_tokens]

    @classmethod
    def from_json(cls, data: list[Any]) -> Use:
        return cls(float(data[0]), float(data[1]), int(data[2]), int(data[3]))


@dataclass(slots=True)
class Totals:
    """Running totals of uses, with the cost spent in the current day, week and month."""

    last_used: float | None = None
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    periods: dict[str, tuple[int, float]] = field(default_factory=dict)

    def add(self, use: Use) -> None:
        if self.last_used is None or use.at > self.last_used:
            self.last_used = use.at
        self.cost += use.cost
        self.prompt_tokens += use.prompt_tokens
        self.completion_tokens += use.completion_tokens
        for reset in RESETS:
            period = period_of(use.at, reset)
            current, spent = self.periods.get(reset, (period, 0.0))
            if period == current:
                self.periods[reset] = (period, spent + use.cost)
            elif period > current:
                self.periods[reset] = (period, use.cost)

    def spent(self, reset: str | None, now: float) -> float:
        """Cost in the period ``now`` falls in (``None``: the key's lifetime)."""
        if reset is None:
            return self.cost
        period, spent = self.periods.get(reset, (-1, 0.0))
        return spent if period == period_of(now, reset) else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "last_used": self.last_used,
            "cost": self.cost,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "periods": {reset: list(value) for reset, value in self.periods.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        periods = {reset: (int(p), float(c)) for reset, (p, c) in data["periods"].items()}
        return cls(
            data["last_used"],
            data["cost"],
            data["prompt_tokens"],
            data["completion_tokens"],
            periods,
        )


class Meter:
    """The true and the visible (lagged) usage of one key."""

    __slots__ = ("pending", "seen", "true")

    def __init__(self) -> None:
        self.true = Totals()
        self.seen = Totals()
        self.pending: deque[Use] = deque()

    def record(self, use: Use, *, now: float, lag: float) -> None:
        self.true.add(use)
        self.pending.append(use)
        self.settle(now=now, lag=lag)

    def settle(self, *, now: float, lag: float) -> None:
        """Move every queued use older than ``lag`` into the visible totals."""
        while self.pending and self.pending[0].at + lag <= now:
            self.seen.add(self.pending.popleft())

    def to_json(self) -> dict[str, Any]:
        return {
            "true": self.true.to_json(),
            "seen": self.seen.to_json(),
            "pending": [use.to_json() for use in self.pending],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Meter:
        meter = cls()
        meter.true = Totals.from_json(data["true"])
        meter.seen = Totals.from_json(data["seen"])
        meter.pending.extend(Use.from_json(item) for item in data["pending"])
        return meter
