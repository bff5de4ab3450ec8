"""Validated value types shared by the file schema and the effective policy model.

Each is an ``Annotated`` type whose validator raises :class:`PolicyValueError` (a ValueError),
so pydantic reports it at the field's location with the message written here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from vault_rotator.policy.durations import missing_unit_message, parse_duration
from vault_rotator.policy.naming import check_key_name_template
from vault_rotator.policy.problems import PolicyValueError
from vault_rotator.policy.schedule import parse_schedule
from vault_rotator.policy.window import parse_window

DialectName = Literal["auto", "a", "b", "c"]
ProviderType = Literal["arouter"]
LimitReset = Literal["daily", "weekly", "monthly"]

_NAME = re.compile(r"[a-z0-9-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_TOKEN = re.compile(r"\S+")


def duration_value(value: object) -> float:
    """A duration from YAML: a string such as ``90s``; a bare number says the unit is missing."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PolicyValueError(f"expected a duration such as 90s, 1.5h or 7d, got {value!r}")
    if not isinstance(value, str):
        raise PolicyValueError(missing_unit_message(f"{value:g}"))
    return parse_duration(value)


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise PolicyValueError("must be longer than 0s")
    return seconds


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PolicyValueError(f"{value!r} may hold only a-z, 0-9 and '-'")
    return value


def normalize_vault_path(value: str) -> str:
    """Strip surrounding slashes; refuse empty, '.' or '..' segments and odd characters."""
    stripped = value.strip("/")
    segments = stripped.split("/")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise PolicyValueError(
                f"invalid Vault path {value!r}: segments may hold only A-Z, a-z, 0-9, '.', '_' "
                "and '-', and may not be empty, '.' or '..'"
            )
    return stripped


def _mount(value: str) -> str:
    if "/" in value.strip("/"):
        raise PolicyValueError(f"invalid kv_mount {value!r}: a mount name has no '/'")
    return normalize_vault_path(value)


def _base_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyValueError(f"invalid base_url {value!r}: expected http(s)://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise PolicyValueError(
            f"invalid base_url {value!r}: no credentials, query or fragment allowed"
        )
    return value.strip().rstrip("/")


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise PolicyValueError(f"{value!r} must be non-empty and hold no spaces")
    return value


def _spending_limit(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise PolicyValueError(f"spending_limit must be a positive amount of USD, got {value!r}")
    return value


def _name_list(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise PolicyValueError(
            "an empty list would allow nothing; omit the field to inherit from the old key"
        )
    for value in values:
        _token(value)
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise PolicyValueError(f"duplicate entries: {', '.join(duplicates)}")
    return values


def _as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _schedule(value: str) -> str:
    return parse_schedule(value).text


def _window(value: str) -> str:
    return parse_window(value).text


def _non_negative(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise PolicyValueError(f"must be a non-negative number of seconds, got {seconds!r}")
    return seconds


# Types for policy files (YAML): durations are written with units.
Duration = Annotated[float, BeforeValidator(duration_value)]
PositiveDuration = Annotated[float, BeforeValidator(duration_value), AfterValidator(_positive)]
# Types for the effective model (stored as JSON): durations are seconds.
Seconds = Annotated[float, AfterValidator(_non_negative)]
PositiveSeconds = Annotated[float, AfterValidator(_non_negative), AfterValidator(_positive)]

Name = Annotated[str, AfterValidator(_name)]
VaultPath = Annotated[str, AfterValidator(normalize_vault_path)]
MountName = Annotated[str, AfterValidator(_mount)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
Token = Annotated[str, AfterValidator(_token)]
SpendingLimit = Annotated[float, AfterValidator(_spending_limit)]
NameList = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), AfterValidator(_name_list)]
ScheduleText = Annotated[str, AfterValidator(_schedule)]
WindowText = Annotated[str, AfterValidator(_window)]
KeyNameTemplate = Annotated[str, AfterValidator(check_key_name_template)]
