"""The JSON shapes of ARouter's three key-management dialects (see the spec's table).

Decisions where the spec is silent:

- Dialect A's ``key_type`` is always ``"standard"``; its ``usage_daily/weekly/monthly`` are the
  visible cost in the current UTC day, ISO week (from Monday) and calendar month.
- Dialect B's ``rate_limit`` is always ``{"requests_per_minute": 600}`` and is not enforced
  (fault injection covers 429s). B and C accept ``limit_reset`` and ``expires_at`` on create and
  enforce them, but do not show them.
- ``GET {item path}`` answers like an update (A nested under ``data``).
- Money is rounded to 10 decimal places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vault_rotator.emulator.clock import iso, iso_or_none
from vault_rotator.emulator.model import KeyView, list_or_none

RATE_LIMIT_RPM = 600


@dataclass(frozen=True, slots=True)
class Dialect:
    """Where one dialect serves keys, and what it calls the id and the spending cap."""

    name: str
    collection: str
    id_field: str
    cap_field: str

    def record(self, key: KeyView) -> dict[str, Any]:
        """The key as the list, get and update answers show it."""
        return _RENDERERS[self.name](key)

    def item_body(self, key: KeyView) -> dict[str, Any]:
        record = self.record(key)
        return {"data": record} if self.name == "a" else record

    def created_body(self, key: KeyView, value: str) -> dict[str, Any]:
        if self.name == "a":
            return {"data": self.record(key), "key": value}
        if self.name == "b":
            return {"key": value, "hash": key.id, "name": key.name}
        return {"key": value, **self.record(key)}

    def deleted_body(self, key_id: str) -> dict[str, Any] | None:
        """The delete answer's body; ``None`` means 204 No Content."""
        if self.name == "a":
            return {"data": {"deleted": True}}
        if self.name == "b":
            return None
        return {"id": key_id, "deleted": True}


DIALECTS = {
    "a": Dialect("a", "/api/v1/keys", "hash", "limit"),
    "b": Dialect("b", "/api/v1/keys", "hash", "limit_usd"),
    "c": Dialect("c", "/v1/keys", "id", "spending_limit"),
}


def _money(amount: float) -> float:
    return round(amount, 10)


def _record_a(key: KeyView) -> dict[str, Any]:
    return {
        "hash": key.id,
        "name": key.name,
        "label": key.label,
        "key_type": "standard",
        "disabled": key.disabled,
        "allowed_providers": list_or_none(key.allowed_providers),
        "allowed_models": list_or_none(key.allowed_models),
        "limit": key.spending_limit,
        "limit_reset": key.limit_reset,
        "usage": _money(key.usage_cost),
        "usage_daily": _money(key.usage_daily),
        "usage_weekly": _money(key.usage_weekly),
        "usage_monthly": _money(key.usage_monthly),
        "created_at": iso(key.created_at),
        "updated_at": iso(key.updated_at),
        "expires_at": iso_or_none(key.expires_at),
    }


def _record_b(key: KeyView) -> dict[str, Any]:
    return {
        "hash": key.id,
        "name": key.name,
        "label": key.label,
        "created_at": iso(key.created_at),
        "allowed_models": list_or_none(key.allowed_models),
        "allowed_providers": list_or_none(key.allowed_providers),
        "limit_usd": key.spending_limit,
        "usage": {
            "prompt_tokens": key.prompt_tokens,
            "completion_tokens": key.completion_tokens,
            "cost": _money(key.usage_cost),
        },
        "last_used_at": iso_or_none(key.last_used_at),
        "rate_limit": {"requests_per_minute": RATE_LIMIT_RPM},
        "disabled": key.disabled,
    }


def _record_c(key: KeyView) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "created_at": iso(key.created_at),
        "last_used_at": iso_or_none(key.last_used_at),
        "spending_limit": key.spending_limit,
        "allowed_providers": list_or_none(key.allowed_providers),
        "allowed_models": list_or_none(key.allowed_models),
        "disabled": key.disabled,
    }


_RENDERERS = {"a": _record_a, "b": _record_b, "c": _record_c}
