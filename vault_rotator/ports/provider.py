"""The narrow port between the rotation engine and an API-key provider.

The engine never imports httpx or a provider module; it speaks to a :class:`KeyProvider` and
receives normalised :class:`KeyRecord` values, whatever dialect the provider serves.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from vault_rotator.display import shown
from vault_rotator.secret import Secret


class Dialect(enum.StrEnum):
    """The three shapes of ARouter's key-management API (see the spec)."""

    A = "a"  # SDK dialect: /api/v1/keys, hash, limit, usage number, no last_used_at
    B = "b"  # management-keys page: /api/v1/keys, hash, limit_usd, usage object, last_used_at
    C = "c"  # rotation guide: /v1/keys, id, spending_limit, last_used_at, no usage


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One provider key as a list pass saw it, normalised across dialects.

    ``None`` means "the dialect does not report this" (or the key has none), never zero.

    ``name`` is exactly what the provider lists (the engine matches its keys by the name it
    sent), so it may hold any character: show it as :attr:`display_name`. ``problem`` says why
    the record could not be read whole (a field of the wrong type, out of range...); such a
    record carries only ``id`` and ``name`` (``""`` if the name itself was unreadable): nothing
    in it is evidence of use, permissions or state, and the engine never acts on it as if it
    were complete.
    """

    id: str
    name: str
    label: str | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    usage_cost: float | None = None
    usage_tokens: int | None = None
    disabled: bool = False
    allowed_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    spending_limit: float | None = None
    limit_reset: str | None = None
    expires_at: datetime | None = None
    problem: str | None = None

    @property
    def display_name(self) -> str:
        """The name escaped and capped for a log line or a table cell."""
        return shown(self.name)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What to create: the permissions of a new key. ``None`` fields are not sent."""

    name: str
    allowed_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    spending_limit: float | None = None
    limit_reset: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A create's answer: the record and the one-time value."""

    record: KeyRecord
    value: Secret


class KeyProvider(Protocol):
    """What the engine needs from a provider account (one management key, one base URL)."""

    @property
    def dialect(self) -> Dialect:
        """The dialect spoken (may probe the server; A provisionally while A/B is open)."""
        ...

    @property
    def detected_dialect(self) -> Dialect | None:
        """The dialect known (configured, or shown by the server), without I/O; None if not."""
        ...

    def list_keys(self, before_page: Callable[[], None] | None = None) -> Sequence[KeyRecord]:
        """Every key of the account, all pages, disabled ones included.

        ``before_page`` is called before each page is requested (a lease renewal hook).
        """
        ...

    def create_key(self, spec: KeySpec) -> CreatedKey:
        """Create a key. Raises AmbiguousCreateError when it may exist without our knowing."""
        ...

    def update_key(self, key_id: str, *, disabled: bool) -> None:
        """Enable or disable a key."""
        ...

    def delete_key(self, key_id: str) -> bool:
        """Delete a key. True if this call deleted it, False if it was already gone (404)."""
        ...

    def verify_key(self, value: Secret) -> None:
        """Prove a key value is live by calling ``GET /v1/models`` with it; raise if not."""
        ...

    def worst_case_seconds(self) -> float:
        """Longest one call may take, retries and backoff included (for lease budgeting)."""
        ...
