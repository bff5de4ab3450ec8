"""Rotation schedules: standard 5-field cron in UTC, ``@daily``-style aliases, or ``every 30d``.

Cron fields are minute, hour, day of month, month, day of week, as in crontab(5): lists,
ranges and steps; month and weekday names (``jan``, ``mon``); day of week 0 and 7 are Sunday.
`cronsim <https://pypi.org/project/cronsim/>`_ evaluates them, with Debian cron's semantics.
Only crontab(5)'s own syntax is accepted, and ``?`` for "any" day of week: cronsim's extensions
(``L``, ``W``, ``#``, a sixth field for seconds) are refused, and so is a step after a single
day of week (``1/3``: cron implementations disagree on whether it runs to Saturday or to
Sunday = 7; write ``1-6/3`` or ``1-7/3``). A cron that restricts both day of month and day of
week is refused too: crontab fires when *either* matches (``0 0 1 * 1`` runs every Monday and
on the 1st), which is rarely what was meant.

``every <duration>`` means "that long after the previous rotation" (not aligned to a clock).

A cron can be valid and still never fire (``0 0 31 2 *``, the 31st of February). The model
accepts it, so a rotation stored with one stays readable, and :meth:`Schedule.next_after` then
answers None at once; a policy file refuses it through :func:`check_fires`: a cron must fire
within 5 years of 2000-01-01 (a 5-field cron that fires at all fires at least once every 8
years, and the 29th of February in 2000, so this finds exactly the crons that never fire).
A search for the next firing never runs past what it was asked for, nor 50 years (cronsim's
own limit): it is bounded and fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

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
FIRES_WITHIN_YEARS = 5
_FIRES_FROM = datetime(2000, 1, 1, tzinfo=UTC)
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_FIELD_VALUES = (60, 24, 31, 12, 8)  # 0-59, 0-23, 1-31, 1-12, 0-7: the longest sensible step
# crontab(5): "*" or a value or a range (numbers or 3-letter names), an optional step; a list.
_ITEM = r"(?:\*|(?:[0-9]+|[A-Za-z]{3})(?:-(?:[0-9]+|[A-Za-z]{3}))?)(?:/[0-9]+)?"
_FIELD = re.compile(rf"{_ITEM}(?:,{_ITEM})*")
_SINGLE_STEP = re.compile(r"(?:[0-9]+|[A-Za-z]{3})/[0-9]+")
_HINTS = {  # cronsim's message -> what a valid field holds
    "Bad minute": "the minute must be 0-59",
    "Bad hour": "the hour must be 0-23",
    "Bad day-of-month": "the day of month must be 1-31",
    "Bad month": "the month must be 1-12 or jan-dec",
    "Bad day-of-week": "the day of week must be 0-7 (0 and 7 are Sunday) or sun-sat",
}


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
    cron = check_cron(stripped)
    _firings(cron, _FIRES_FROM, expr=stripped)
    return Schedule(text=stripped, cron=cron)


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


def check_steps(schedule: Schedule) -> Schedule:
    """The schedule, if each step of its cron is at most the number of values its field has
    (minute 60, hour 24, day of month 31, month 12, day of week 8); else PolicyValueError.

    A longer step (``0-59/1000000000000``) is a typo that fires once per range; policy files
    refuse it, while a stored policy holding one stays readable.
    """
    if schedule.cron is None:
        return schedule
    for name, count, field in zip(_FIELD_NAMES, _FIELD_VALUES, schedule.cron.split(), strict=True):
        for item in field.split(","):
            _, slash, step = item.partition("/")
            if slash and int(step) > count:
                raise PolicyValueError(
                    f"invalid cron {shown(schedule.text)}: the {name}'s step {clipped(step)} is "
                    f"over {count}, the number of values the {name} has"
                )
    return schedule


def next_fire(cron: str, after: datetime, until: datetime | None = None) -> datetime | None:
    """The cron's first firing at or after ``after``; None if none by ``until`` (or ever).

    A cron that never fires answers None at once; the search otherwise stops at the first
    firing, at most 50 years on.
    """
    moment = after.astimezone(UTC)
    floor = moment.replace(microsecond=0)
    # cronsim answers strictly after its start, to the second: start a second before the
    # first whole second that is not before ``after``.
    start = floor if moment.microsecond else floor - timedelta(seconds=1)
    firings = _firings(check_cron(cron), start, expr=cron)
    try:
        fire = None if firings is None else next(firings, None)
    except OverflowError:  # no firing before the end of year 9999
        return None
    if fire is None or (until is not None and fire > until):
        return None
    return fire.replace(tzinfo=UTC)


def check_cron(expr: str) -> str:
    """The expression's 5 fields, one space apart (day of week ``?`` as ``*``), if crontab(5)
    syntax; else PolicyValueError."""
    fields = expr.split()
    if len(fields) != 5:
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: expected 5 fields (minute hour day month weekday), "
            f"got {len(fields)}"
        )
    if fields[4] == "?":
        fields[4] = "*"
    for name, field in zip(_FIELD_NAMES, fields, strict=True):
        if not _FIELD.fullmatch(field):
            raise PolicyValueError(
                f"invalid cron {shown(expr)}: the {name} {shown(field)} is not crontab syntax "
                "(a number or name, a range a-b, a step /n, '*', or a list of them)"
            )
    if any(_SINGLE_STEP.fullmatch(item) for item in fields[4].split(",")):
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: a step in day of week needs a range or '*' "
            "(write 1-6/3 or 1-7/3: cron implementations disagree on where 1/3 ends)"
        )
    if fields[2] != "*" and fields[4] != "*":
        raise PolicyValueError(
            f"invalid cron {shown(expr)}: it restricts both day of month and day of week, and "
            "crontab fires when either matches; restrict only one of them"
        )
    return " ".join(fields)


def _firings(cron: str, start: datetime, *, expr: str) -> CronSim | None:
    """cronsim's firings strictly after ``start``; None for a valid cron that never fires.

    cronsim refuses a day of month that none of the months has: when the same cron parses
    with every month, and its months parse with day 1, only that combination was refused.
    """
    try:
        return CronSim(cron, start)
    except CronSimError as exc:
        minute, hour, day, month, weekday = cron.split()
        if _parses(f"{minute} {hour} {day} * {weekday}") and _parses(f"0 0 1 {month} *"):
            return None
        hint = _HINTS.get(str(exc), str(exc))
        raise PolicyValueError(f"invalid cron {shown(expr)}: {clipped(hint)}") from exc


def _parses(cron: str) -> bool:
    try:
        CronSim(cron, _FIRES_FROM)
    except CronSimError:
        return False
    return True


def _interval(text: str) -> float:
    duration = text.removeprefix("every").strip()
    if not duration:
        raise PolicyValueError(f"schedule {shown(text)} lacks its interval, as in 'every 30d'")
    seconds = parse_duration(duration)
    if seconds <= 0:
        raise PolicyValueError(f"schedule {shown(text)}: the interval must be longer than 0s")
    return seconds
