"""Rotation schedules: standard 5-field cron in UTC, ``@daily``-style aliases, or ``every 30d``.

Cron fields are minute, hour, day of month, month, day of week, as in crontab(5): day of week
0 and 7 are Sunday, 1 is Monday, and names (``mon``..``sun``) work too. APScheduler 3 numbers
weekdays from Monday = 0, so the day-of-week field is translated to names before it reaches
APScheduler; always build triggers with :func:`cron_trigger`, never with
``CronTrigger.from_crontab`` directly. A cron that restricts both day of month and day of week is
refused: crontab fires when either matches, APScheduler only when both do.

``every <duration>`` means "that long after the previous rotation" (not aligned to a clock).

A cron can be valid and still never fire (``0 0 31 2 *``, the 31st of February). The model
accepts it, so a rotation stored with one stays readable, and :meth:`Schedule.next_after` then
answers None; a policy file refuses it through :func:`check_fires`: a cron must fire within
5 years of 2000-01-01 (a 5-field cron that fires at all fires at least once every 8 years,
and the 29th of February in 2000, so this finds exactly the crons that never fire).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from vault_rotator.policy.durations import parse_duration
from vault_rotator.policy.problems import PolicyValueError, clipped, shown

ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: Sunday = 0
FIRES_WITHIN_YEARS = 5
_FIRES_FROM = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule: either a standard cron expression (UTC) or an interval in seconds."""

    text: str
    cron: str | None = None
    interval_s: float | None = None

    def next_after(self, moment: datetime, until: datetime | None = None) -> datetime | None:
        """The first due time strictly after ``moment`` (aware); None if none until ``until``.

        For a cron, the next firing (None when it never fires, or not by ``until``); for
        ``every``, ``moment`` + interval, where ``moment`` should be the previous rotation.
        """
        if moment.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        if self.interval_s is not None:
            return (moment + timedelta(seconds=self.interval_s)).astimezone(UTC)
        assert self.cron is not None
        return next_fire(self.cron, moment + timedelta(microseconds=1), until)


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raise PolicyValueError naming the problem."""
    stripped = text.strip()
    if stripped.startswith("@"):
        if stripped not in ALIASES:
            raise PolicyValueError(
                f"unknown schedule {shown(text)}: expected one of {', '.join(ALIASES)}, "
                "a 5-field cron or 'every <duration>'"
            )
        return Schedule(text=stripped, cron=ALIASES[stripped])
    if stripped.startswith("every ") or stripped == "every":
        return Schedule(text=stripped, interval_s=_interval(stripped))
    cron_trigger(stripped)
    return Schedule(text=stripped, cron=" ".join(stripped.split()))


def check_fires(schedule: Schedule) -> Schedule:
    """The schedule, if it is an interval or a cron that fires; else PolicyValueError."""
    if schedule.cron is None:
        return schedule
    until = _FIRES_FROM.replace(year=_FIRES_FROM.year + FIRES_WITHIN_YEARS)
    if next_fire(schedule.cron, _FIRES_FROM, until) is None:
        raise PolicyValueError(
            f"cron {shown(schedule.text)} never fires within {FIRES_WITHIN_YEARS} years: check "
            "that the months it names have that day (February has no 30th or 31st; April, "
            "June, September and November no 31st)"
        )
    return schedule


def next_fire(cron: str, after: datetime, until: datetime | None = None) -> datetime | None:
    """The cron's first firing at or after ``after``; None if none by ``until`` (or ever).

    A cron that never fires is searched up to the year 9999 without ``until`` (about half a
    second); pass ``until`` whenever a later firing would not matter.
    """
    trigger = cron_trigger(cron)
    if until is not None:
        trigger.end_date = until.astimezone(UTC)
    fire = trigger.get_next_fire_time(None, after)
    return None if fire is None else datetime.fromtimestamp(fire.timestamp(), UTC)


def _interval(text: str) -> float:
    duration = text.removeprefix("every").strip()
    if not duration:
        raise PolicyValueError(f"schedule {shown(text)} lacks its interval, as in 'every 30d'")
    seconds = parse_duration(duration)
    if seconds <= 0:
        raise PolicyValueError(f"schedule {shown(text)}: the interval must be longer than 0s")
    return seconds


def cron_trigger(expr: str) -> Any:
    """An APScheduler CronTrigger (UTC) for a standard crontab expression; raise if invalid."""
    fields = expr.split()
    if len(fields) != 5:
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: expected 5 fields (minute hour day month weekday), "
            f"got {len(fields)}"
        )
    if fields[2] not in ("*", "?") and fields[4] not in ("*", "?"):
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: it restricts both day of month and day of week, which "
            "crontab ORs and APScheduler ANDs; restrict only one of them"
        )
    fields[4] = translate_day_of_week(fields[4], expr)
    try:
        return CronTrigger.from_crontab(" ".join(fields), timezone="UTC")
    except ValueError as exc:
        raise PolicyValueError(f"invalid cron {shown(expr)}: {clipped(str(exc))}") from exc


def translate_day_of_week(field: str, expr: str) -> str:
    """Turn a crontab day-of-week field (Sunday = 0 or 7) into APScheduler day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        days |= _day_part(part, expr)
    if len(days) == 7:
        return "*"
    return ",".join(DAY_NAMES[day] for day in (1, 2, 3, 4, 5, 6, 0) if day in days)


def _day_part(part: str, expr: str) -> set[int]:
    body, slash, step_text = part.partition("/")
    if slash and not (step_text.isdigit() and int(step_text) > 0):
        raise PolicyValueError(f"invalid cron {shown(expr)}: bad step {shown(part)} in day of week")
    step = int(step_text) if slash else 1
    if body == "*":
        low, high = 0, 6
    elif "-" in body:
        first, _, last = body.partition("-")
        low, high = _day_value(first, expr), _day_value(last, expr)
    else:
        low = _day_value(body, expr)
        high = 6 if slash else low
    if low > high:
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: day-of-week range {shown(body)} runs backwards"
        )
    return {day % 7 for day in range(low, high + 1, step)}


def _day_value(text: str, expr: str) -> int:
    lowered = text.lower()
    if lowered in DAY_NAMES:
        return DAY_NAMES.index(lowered)
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise PolicyValueError(
        f"invalid cron {shown(expr)}: day of week {shown(text)} is not 0-7 or sun, mon, ... sat"
    )
