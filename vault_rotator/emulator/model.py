"""The emulator's dialect-neutral data: keys to create, key views, and how ids and values look.

Ids: dialects A and B use ``hash``, 64 lowercase hex digits; dialect C uses ``id``, ``key_``
plus 12 lowercase letters and digits. Values are ``lr_live_`` plus 40 URL-safe characters; the
``label`` of a key is its value's first 10 and last 4 characters (``lr_live_ab...wxyz``).
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass

VALUE_PREFIX = "lr_live_"
_VALUE_ALPHABET = string.ascii_letters + string.digits + "-_"
_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class NewKey:
    """A validated key to create, whatever dialect asked for it."""

    name: str
    allowed_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    spending_limit: float | None = None
    limit_reset: str | None = None
    expires_at: float | None = None
    disabled: bool = False
    label: str | None = None  # None: derived from the value


@dataclass(frozen=True, slots=True)
class KeyView:
    """One key as the API shows it now: usage lagged, ``last_used_at`` rounded."""

    id: str
    name: str
    label: str
    created_at: float
    updated_at: float
    disabled: bool
    deleted: bool
    allowed_providers: tuple[str, ...] | None
    allowed_models: tuple[str, ...] | None
    spending_limit: float | None
    limit_reset: str | None
    expires_at: float | None
    last_used_at: float | None
    usage_cost: float
    prompt_tokens: int
    completion_tokens: int
    usage_daily: float
    usage_weekly: float
    usage_monthly: float

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def list_or_none(items: tuple[str, ...] | None) -> list[str] | None:
    """A JSON list of a key's allowed providers or models (``None`` stays ``None``)."""
    return None if items is None else list(items)


def new_id(dialect: str, rng: random.Random) -> str:
    """A fresh key id in the dialect's format."""
    if dialect == "c":
        return "key_" + "".join(rng.choices(_ID_ALPHABET, k=12))
    return f"{rng.getrandbits(256):064x}"


def new_value(rng: random.Random) -> str:
    """A fresh ``lr_live_`` key value."""
    return VALUE_PREFIX + "".join(rng.choices(_VALUE_ALPHABET, k=40))


def label_of(value: str) -> str:
    """The display form of a value: ``lr_live_ab...wxyz``."""
    return f"{value[:10]}...{value[-4:]}"


def value_hash(value: str) -> str:
    """SHA-256 of a value: what the emulator keeps instead of the value itself."""
    return hashlib.sha256(value.encode()).hexdigest()
