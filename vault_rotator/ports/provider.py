"""The narrow port between the rotation engine and an API-key provider.

The engine never imports httpx or a provider module; it speaks to a :class:`KeyProvider` and
receives normalised :class:`KeyRecord` values, whatever dialect the provider serves.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Protocol

from vault_rotator.display import shown
from vault_rotator.secret import Secret


class Dialect(enum.StrEnum):
    """The three shapes of ARouter's key-management API (see the spec)."""

    A = "a"  # SDK dialect: /api/v1/keys, hash, limit, usage number, no last_used_at
    B = "b"  # management-keys page: /api/v1/keys, hash, limit_usd, usage object, last_used_at
    C = "c"  # rotation guide: /v1/keys, id, spending_limit, last_used_at, no usage


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a key may do: the one value type for the permission fields, wherever they appear.

    A listed key's (:attr:`KeyRecord.permissions`), a new key's (:attr:`KeySpec.permissions`),
    the ones a rotation asks for (saved in its state record) and a policy's own
    (``KeyPolicy.permissions``). ``None`` means "not set": not limited on a listed key, not
    sent on a create, inherited from the old key in a policy.
    """

    allowed_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    spending_limit: float | None = None  # USD
    limit_reset: str | None = None  # the cap's period ("daily", "weekly", "monthly")
    expires_at: datetime | None = None  # timezone-aware

    @property
    def restricts_use(self) -> bool:
        """True if the key is limited to some providers or models."""
        return self.allowed_providers is not None or self.allowed_models is not None

    def set_fields(self) -> Mapping[str, object]:
        """Each field that is set, by name, in declaration order."""
        values = ((name, getattr(self, name)) for name in PERMISSION_FIELDS)
        return {name: value for name, value in values if value is not None}

    def inherit(self, old: Permissions) -> Permissions:
        """These permissions, each unset one but the expiry taken from ``old``.

        A new key's expiry is its own (``key_ttl`` from its creation), never the old key's.
        """
        own = self.set_fields()
        taken: dict[str, Any] = {
            name: value
            for name, value in old.set_fields().items()
            if name not in own and name != "expires_at"
        }
        return replace(self, **taken)

    def differs_from(self, listed: Permissions) -> str | None:
        """How ``listed`` first shows providers, models or cap other than these, or None.

        E.g. ``listed with spending_limit 5.0, not 25.0``. A field unset on either side is not
        compared (a dialect may not list it); lists compare as sets, amounts to the micro-dollar.
        """
        for field in COMPARED_FIELDS:
            wanted, shown_as = getattr(self, field), getattr(listed, field)
            if wanted is not None and shown_as is not None and _norm(shown_as) != _norm(wanted):
                return f"listed with {field} {shown_as!r}, not {wanted!r}"
        return None


PERMISSION_FIELDS = tuple(f.name for f in fields(Permissions))
COMPARED_FIELDS = ("allowed_providers", "allowed_models", "spending_limit")
NO_PERMISSIONS = Permissions()


def _norm(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(sorted(str(v) for v in value))
    if isinstance(value, int | float):
        return round(float(value), 6)
    return value


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
    permissions: Permissions = NO_PERMISSIONS
    problem: str | None = None

    @property
    def display_name(self) -> str:
        """The name escaped and capped for a log line or a table cell."""
        return shown(self.name)

    # Read-only shorthands for the listed permissions.

    @property
    def allowed_providers(self) -> tuple[str, ...] | None:
        return self.permissions.allowed_providers

    @property
    def allowed_models(self) -> tuple[str, ...] | None:
        return self.permissions.allowed_models

    @property
    def spending_limit(self) -> float | None:
        return self.permissions.spending_limit

    @property
    def limit_reset(self) -> str | None:
        return self.permissions.limit_reset

    @property
    def expires_at(self) -> datetime | None:
        return self.permissions.expires_at


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What to create: a new key's name and permissions (fields left ``None`` are not sent)."""

    name: str
    permissions: Permissions = NO_PERMISSIONS


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
