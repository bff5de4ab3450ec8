"""Maintenance windows: when a scheduled rotation prefers to start (UTC).

Forms: ``"09:00-17:00"`` (every day), ``"Mon-Fri 09:00-17:00"``, ``"Sat,Sun 00:00-06:00"``.
Days are Mon, Tue, Wed, Thu, Fri, Sat, Sun (any case), single or as ranges, comma-separated;
a range may wrap through the week (``Fri-Mon``). Times are HH:MM, 00:00 to 24:00; the end is
exclusive. When the end is earlier than the start (``Fri 22:00-02:00``) the window wraps past
midnight: it opens on each listed day and closes the next morning. Start equal to end is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from vault_rotator.policy.problems import PolicyValueError, shown

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_WINDOW = re.compile(r"(?:(?P<days>\S+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """A parsed window: weekdays (0 = Monday) and minutes of the day, ``end`` exclusive."""

    text: str
    days: frozenset[int]
    start_minute: int
    end_minute: int

    @property
    def wraps(self) -> bool:
        """True when the window runs past midnight into the next day."""
        return self.end_minute < self.start_minute

    def contains(self, moment: datetime) -> bool:
        """Whether an aware moment lies inside the window."""
        utc = _utc(moment)
        minute = utc.hour * 60 + utc.minute + utc.second / 60
        day = utc.weekday()
        if not self.wraps:
            return day in self.days and self.start_minute <= minute < self.end_minute
        if day in self.days and minute >= self.start_minute:
            return True
        return (day - 1) % 7 in self.days and minute < self.end_minute

    def next_open(self, moment: datetime) -> datetime:
        """``moment`` itself if inside the window, else the next time the window opens."""
        utc = _utc(moment)
        if self.contains(utc):
            return utc
        for offset in range(8):
            day = utc.date() + timedelta(days=offset)
            opens = datetime.combine(day, time(), UTC) + timedelta(minutes=self.start_minute)
            if day.weekday() in self.days and opens > utc:
                return opens
        raise AssertionError("a window with at least one day opens within 8 days")


def parse_window(text: str) -> Window:
    """Parse a window; raise PolicyValueError naming the problem."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise PolicyValueError(
            f"invalid window {shown(text)}: expected [DAYS ]HH:MM-HH:MM, "
            "such as 'Mon-Fri 09:00-17:00' or '22:00-02:00'"
        )
    start, end = _minute(match["start"], text), _minute(match["end"], text)
    if start == _DAY_MINUTES:
        raise PolicyValueError(f"invalid window {shown(text)}: a window cannot start at 24:00")
    if start == end:
        raise PolicyValueError(f"invalid window {shown(text)}: start and end are equal")
    days = _days(match["days"], text) if match["days"] else frozenset(range(7))
    return Window(text=text.strip(), days=days, start_minute=start, end_minute=end)


def _minute(clock: str, text: str) -> int:
    hours, minutes = (int(part) for part in clock.split(":"))
    total = hours * 60 + minutes
    if minutes > 59 or total > _DAY_MINUTES:
        raise PolicyValueError(f"invalid window {shown(text)}: {clock} is not a time of day")
    return total


def _days(spec: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.partition("-")
        low = _weekday(first, text)
        high = _weekday(last, text) if dash else low
        days.update((low + step) % 7 for step in range((high - low) % 7 + 1))
    return frozenset(days)


def _weekday(name: str, text: str) -> int:
    lowered = name.strip().lower()
    if lowered not in WEEKDAYS:
        raise PolicyValueError(
            f"invalid window {shown(text)}: {shown(name)} is not a day "
            "(Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
        )
    return WEEKDAYS.index(lowered)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("windows compare aware datetimes only")
    return moment.astimezone(UTC)
