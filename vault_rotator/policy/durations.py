"""Durations as policy files write them: a number and a unit, such as ``90s``, ``1.5h``, ``7d``.

Units are ``s`` (seconds), ``m`` (minutes), ``h`` (hours) and ``d`` (days, always 86 400 s:
UTC has no daylight saving). A bare number is refused, because ``drain_period: 60`` could mean
seconds or minutes. Values are handled as float seconds.
"""

from __future__ import annotations

import math
import re

from vault_rotator.policy.problems import PolicyValueError, shown

UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SECONDS = 36500 * 86400.0  # 100 years: anything longer is a typo

_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[a-zA-Z]*)")
_BARE_NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]+)?")


def parse_duration(text: str) -> float:
    """Parse ``"90s"``, ``"1.5h"`` or ``"7d"`` into seconds; raise PolicyValueError otherwise."""
    stripped = text.strip()
    if _BARE_NUMBER.fullmatch(stripped):
        raise PolicyValueError(missing_unit_message(stripped))
    match = _DURATION.fullmatch(stripped)
    if match is None:
        raise PolicyValueError(
            f"invalid duration {shown(text)}: expected a non-negative number and a unit "
            "(s, m, h or d), such as 90s, 1.5h or 7d"
        )
    unit = match["unit"]
    if unit not in UNITS:
        raise PolicyValueError(
            f"invalid duration {shown(text)}: unknown unit {shown(unit)}, expected s, m, h or d"
        )
    seconds = float(match["number"]) * UNITS[unit]
    if seconds > MAX_SECONDS:
        raise PolicyValueError(f"invalid duration {shown(text)}: longer than 100 years")
    return seconds


def missing_unit_message(number: str) -> str:
    """The message for a duration written without a unit, suggesting each unit."""
    return (
        f"duration {number} has no unit: write {number}s, {number}m, {number}h or {number}d "
        "(seconds, minutes, hours or days)"
    )


def format_duration(seconds: float) -> str:
    """Write seconds in the largest unit that holds them exactly: 90 -> "90s", 86400 -> "1d"."""
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format a non-finite duration: {seconds!r}")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds!r}s"
