"""Validated value types shared by the file schema and the effective policy model.

Each is an ``Annotated`` type whose validator raises :class:`PolicyValueError` (a ValueError),
so pydantic reports it at the field's location with the message written here.

The ``File*`` types are what a policy file may hold, stricter than the model's types, so that
a policy stored in a rotation's state record by an older version stays readable:

* ``base_url``: printable ASCII, a valid port, no path (``/`` at most), query, fragment or
  credentials: the provider's root URL, such as ``https://api.arouter.ai``.
* ``kv_mount``: not one of Vault's system paths ``sys``, ``auth``, ``identity`` or
  ``cubbyhole`` (in any case); none of them is a KV v2 mount.
* ``spending_limit``: at most 1,000,000 USD (a typo of a few digits would let a leaked key
  spend it).
* ``schedule``: a cron must fire (see :func:`~vault_rotator.policy.schedule.check_fires`), and
  no step may be longer than its field has values (:func:`~vault_rotator.policy.schedule.
  check_steps`: ``0-59/1000000000000`` is refused).
* ``ack_ttl``: at most 90 days (``defaults.MAX_ACK_TTL_S``).
* ``key_name``: literal text from ``A-Z a-z 0-9 . _ -`` only (see
  :mod:`~vault_rotator.policy.naming`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

import vault_rotator.policy.defaults as builtin
from vault_rotator.policy.durations import (
    MAX_SECONDS,
    format_duration,
    missing_unit_message,
    parse_duration,
)
from vault_rotator.policy.naming import check_key_name_charset, check_key_name_template
from vault_rotator.policy.problems import PolicyValueError, shown
from vault_rotator.policy.schedule import check_fires, check_steps, parse_schedule
from vault_rotator.policy.window import parse_window

DialectName = Literal["auto", "a", "b", "c"]
ProviderType = Literal["arouter"]
LimitReset = Literal["daily", "weekly", "monthly"]

MAX_SPENDING_LIMIT = 1_000_000.0  # USD
SYSTEM_MOUNTS = ("sys", "auth", "identity", "cubbyhole")

_NAME = re.compile(r"[a-z0-9-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_TOKEN = re.compile(r"\S+")
_URL_CHARS = re.compile(r"[\x21-\x7e]+")


def duration_value(value: object) -> float:
    """A duration from YAML: a string such as ``90s``; a bare number says the unit is missing."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PolicyValueError(f"expected a duration such as 90s, 1.5h or 7d, got {shown(value)}")
    if isinstance(value, str):
        return parse_duration(value)
    if not (math.isfinite(value) and abs(value) <= MAX_SECONDS):  # no float() of a huge int
        raise PolicyValueError(f"expected a duration such as 90s, 1.5h or 7d, got {shown(value)}")
    raise PolicyValueError(missing_unit_message(f"{value:g}"))


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise PolicyValueError("must be longer than 0s")
    return seconds


def is_name(value: object) -> bool:
    """Whether ``value`` fits the environment and key name grammar (a-z, 0-9 and '-'), as a
    name read from a record must before it is joined into a Vault path."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PolicyValueError(f"{shown(value)} may hold only a-z, 0-9 and '-'")
    return value


def normalize_vault_path(value: str) -> str:
    """Strip surrounding slashes; refuse empty, '.' or '..' segments and odd characters."""
    stripped = value.strip("/")
    segments = stripped.split("/")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise PolicyValueError(
                f"invalid Vault path {shown(value)}: segments may hold only A-Z, a-z, 0-9, '.', "
                "'_' and '-', and may not be empty, '.' or '..'"
            )
    return stripped


def _mount(value: str) -> str:
    if "/" in value.strip("/"):
        raise PolicyValueError(f"invalid kv_mount {shown(value)}: a mount name has no '/'")
    return normalize_vault_path(value)


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _base_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyValueError(f"invalid base_url {shown(value)}: expected http(s)://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise PolicyValueError(
            f"invalid base_url {shown(value)}: no credentials, query or fragment allowed"
        )
    return value.strip().rstrip("/")


def _root_url(value: str) -> str:
    text = value.strip()
    if not _URL_CHARS.fullmatch(text):
        raise PolicyValueError(
            f"invalid base_url {shown(value)}: only printable ASCII without spaces "
            "(write an international host name in punycode)"
        )
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise PolicyValueError(f"invalid base_url {shown(value)}: expected http(s)://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise PolicyValueError(
            f"invalid base_url {shown(value)}: no credentials allowed (the management key "
            "comes from Vault)"
        )
    try:
        port = parts.port  # urlsplit checks the port only when asked
    except ValueError as exc:
        raise PolicyValueError(f"invalid base_url {shown(value)}: invalid port") from exc
    if port == 0 or parts.netloc.endswith(":"):
        raise PolicyValueError(f"invalid base_url {shown(value)}: invalid port")
    if not _HOST.fullmatch(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc):
        raise PolicyValueError(
            f"invalid base_url {shown(value)}: the host is not a name or an IP address"
        )
    if parts.path not in ("", "/") or "?" in text or "#" in text:
        raise PolicyValueError(
            f"invalid base_url {shown(value)}: no path, query or fragment; write the "
            "provider's root URL, such as https://api.arouter.ai"
        )
    return value


def _not_system_mount(value: str) -> str:
    if value.lower() in SYSTEM_MOUNTS:
        raise PolicyValueError(
            f"{shown(value)} is a Vault system path ({', '.join(SYSTEM_MOUNTS)}), not a KV v2 mount"
        )
    return value


def _spending_cap(value: float) -> float:
    if value > MAX_SPENDING_LIMIT:
        raise PolicyValueError(
            f"{_usd(value)} USD is over the cap of {_usd(MAX_SPENDING_LIMIT)} USD for a "
            "spending_limit"
        )
    return value


def _usd(value: float) -> str:
    if value >= 1e18:
        return f"{value:.3g}"
    return f"{value:,.2f}".removesuffix(".00")


def _firing_schedule(value: str) -> str:
    return check_fires(check_steps(parse_schedule(value))).text


def _ack_ttl_cap(seconds: float) -> float:
    if seconds > builtin.MAX_ACK_TTL_S:
        raise PolicyValueError(
            f"{format_duration(seconds)} is over the maximum of "
            f"{format_duration(builtin.MAX_ACK_TTL_S)} for ack_ttl (an instance silent that long "
            "is gone; run the ack command from a timer to keep an agent-only consumer present)"
        )
    return seconds


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise PolicyValueError(f"{shown(value)} must be non-empty and hold no spaces")
    return value


def _spending_limit(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise PolicyValueError(
            f"spending_limit must be a positive amount of USD, got {shown(value)}"
        )
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
        raise PolicyValueError(f"must be a non-negative number of seconds, got {shown(seconds)}")
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

# Stricter types for what a policy file may hold (see the module docstring).
FileBaseUrl = Annotated[str, AfterValidator(_root_url), AfterValidator(_base_url)]
FileMountName = Annotated[str, AfterValidator(_mount), AfterValidator(_not_system_mount)]
FileSpendingLimit = Annotated[float, AfterValidator(_spending_limit), AfterValidator(_spending_cap)]
FileScheduleText = Annotated[str, AfterValidator(_firing_schedule)]
FileAckTtl = Annotated[
    float, BeforeValidator(duration_value), AfterValidator(_positive), AfterValidator(_ack_ttl_cap)
]
FileKeyNameTemplate = Annotated[
    str, AfterValidator(check_key_name_template), AfterValidator(check_key_name_charset)
]
