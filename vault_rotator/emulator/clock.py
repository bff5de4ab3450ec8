"""Time for the emulator: the injected clock, ISO-8601 rendering and spending periods.

Every time the emulator stores is an epoch float on the *provider's* clock (our ``clock()``
plus ``clock_offset``); nothing here reads the system time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

RESETS = ("daily", "weekly", "monthly")
_DAY = 86_400


def iso(epoch: float) -> str:
    """Render epoch seconds as ISO-8601 UTC with ``Z``; milliseconds appear only when non-zero."""
    whole = math.floor(epoch)
    millis = int((epoch - whole) * 1000)
    text = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}Z" if millis == 0 else f"{text}.{millis:03d}Z"


def iso_or_none(epoch: float | None) -> str | None:
    """:func:`iso`, passing ``None`` through."""
    return None if epoch is None else iso(epoch)


def parse_iso(text: str) -> float:
    """Parse an ISO-8601 timestamp in UTC (``Z`` or ``+00:00``) into epoch seconds."""
    moment = datetime.fromisoformat(text)
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError(f"{text!r} is not a UTC timestamp")
    return moment.timestamp()


def floor_to(epoch: float, granularity: float) -> float:
    """Round ``epoch`` down to a multiple of ``granularity`` seconds (0 leaves it as is)."""
    if granularity <= 0:
        return epoch
    return math.floor(epoch / granularity) * granularity


def period_of(epoch: float, reset: str) -> int:
    """Number the UTC day, ISO week (from Monday) or month that ``epoch`` falls in."""
    day = math.floor(epoch / _DAY)
    if reset == "daily":
        return day
    if reset == "weekly":
        return (day + 3) // 7  # 1970-01-01 was a Thursday
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.year * 12 + moment.month - 1
