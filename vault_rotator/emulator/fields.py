"""Validation of management request bodies and listing queries.

Decisions where the spec is silent:

- A create or update body naming a field the dialect does not accept (for instance
  ``limit_usd`` sent to dialect A, or ``expires_at`` in an update) is a 400 that names the field,
  so a client speaking the wrong dialect fails loudly instead of silently dropping a spending cap.
- ``name`` is 1-256 characters; it cannot be cleared (null is a 400). Names need not be unique.
- ``disabled`` must be a boolean; null is a 400.
- Lists hold at most 1000 non-empty strings (what the client accepts: a key may list that many
  models, so a state record copying them may be past a Vault listener's limits); ``[]`` allows
  nothing, null allows everything.
- ``page_size`` must be a positive integer and is clamped to 100; ``offset`` is a non-negative
  integer; ``include_disabled`` is ``true``/``false``/``1``/``0``. A ``page_token`` the emulator
  did not issue is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vault_rotator.emulator.clock import RESETS, parse_iso
from vault_rotator.emulator.model import NewKey
from vault_rotator.emulator.store import Order
from vault_rotator.emulator.wire import BadRequestError, Request

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_MAX_LIST = 1000
_MAX_NAME = 256

Check = Callable[[str, object], object]


def _name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_NAME:
        raise BadRequestError(f"'{field}' must be a non-empty string of at most {_MAX_NAME} chars")
    return value


def _strings(field: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > _MAX_LIST
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise BadRequestError(f"'{field}' must be null or a list of non-empty strings")
    return tuple(value)


def _amount(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequestError(f"'{field}' must be null or a number of US dollars")
    if not math.isfinite(value) or value < 0:
        raise BadRequestError(f"'{field}' must be a finite amount of at least 0")
    return float(value)


def _reset(field: str, value: object) -> str | None:
    if value is not None and value not in RESETS:
        raise BadRequestError(f"'{field}' must be null, 'daily', 'weekly' or 'monthly'")
    return value


def _timestamp(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            pass
    raise BadRequestError(f"'{field}' must be null or an ISO-8601 UTC timestamp")


def _flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"'{field}' must be true or false")
    return value


def _checks(cap_field: str, *, create: bool) -> dict[str, tuple[str, Check]]:
    """Wire field -> (attribute name, check) for one dialect's create or update body."""
    checks: dict[str, tuple[str, Check]] = {
        "name": ("name", _name),
        "allowed_providers": ("allowed_providers", _strings),
        "allowed_models": ("allowed_models", _strings),
        cap_field: ("spending_limit", _amount),
        "limit_reset": ("limit_reset", _reset),
    }
    if create:
        checks["expires_at"] = ("expires_at", _timestamp)
    else:
        checks["disabled"] = ("disabled", _flag)
    return checks


def _parse(
    body: dict[str, Any], checks: dict[str, tuple[str, Check]], *, required: bool
) -> dict[str, Any]:
    """Attribute -> checked value for each field of ``body``; ``name`` if ``required``."""
    unknown = sorted(set(body) - set(checks))
    if unknown:
        accepted = ", ".join(sorted(checks))
        raise BadRequestError(f"unknown field '{unknown[0]}' (accepted: {accepted})")
    if required and "name" not in body:
        raise BadRequestError("'name' is required")
    return {checks[wire][0]: checks[wire][1](wire, value) for wire, value in body.items()}


def parse_create(body: dict[str, Any], cap_field: str) -> NewKey:
    """A create body as a :class:`NewKey`; ``name`` is required."""
    return NewKey(**_parse(body, _checks(cap_field, create=True), required=True))


def parse_update(body: dict[str, Any], cap_field: str) -> dict[str, Any]:
    """An update body as attribute -> new value; omitted fields are absent."""
    return _parse(body, _checks(cap_field, create=False), required=False)


@dataclass(frozen=True, slots=True)
class ListQuery:
    size: int
    offset: int
    after: Order | None
    include_disabled: bool


def parse_list_query(request: Request, *, tokens: bool) -> ListQuery:
    """Read ``page_size``, ``offset``, ``page_token`` (if ``tokens``) and ``include_disabled``."""
    size = _int_param(request, "page_size", DEFAULT_PAGE_SIZE, minimum=1)
    offset = _int_param(request, "offset", 0, minimum=0)
    token = request.param("page_token") if tokens else None
    flag = (request.param("include_disabled") or "false").lower()
    if flag not in ("true", "false", "1", "0"):
        raise BadRequestError("'include_disabled' must be true or false")
    after = decode_token(token) if token else None
    return ListQuery(min(size, MAX_PAGE_SIZE), offset, after, flag in ("true", "1"))


def _int_param(request: Request, name: str, default: int, *, minimum: int) -> int:
    text = request.param(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise BadRequestError(f"'{name}' must be an integer of at least {minimum}")
    return value


def encode_token(order: Order) -> str:
    """An opaque page token for the cursor ``order``."""
    raw = json.dumps(["p1", order[0], order[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Order:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        tag, created_at, seq = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        tag = None
    if tag != "p1" or not isinstance(seq, int) or not isinstance(created_at, int | float):
        raise BadRequestError("'page_token' is not a token this server issued")
    return (float(created_at), seq)


def _moment(field: str, value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return _timestamp(field, value)


_SEED_CHECKS: dict[str, tuple[str, Check]] = {
    "name": ("name", _name),
    "allowed_providers": ("allowed_providers", _strings),
    "allowed_models": ("allowed_models", _strings),
    "spending_limit": ("spending_limit", _amount),
    "limit_reset": ("limit_reset", _reset),
    "expires_at": ("expires_at", _moment),
    "disabled": ("disabled", _flag),
    "label": ("label", lambda field, value: None if value is None else _name(field, value)),
    "created_at": ("created_at", _moment),
}


def parse_seed(body: dict[str, Any]) -> tuple[NewKey, float | None]:
    """A seed request (dialect-neutral names; times as ISO-8601 or epoch seconds)."""
    values = _parse(body, _SEED_CHECKS, required=True)
    created_at = values.pop("created_at", None)
    return NewKey(**values), created_at
