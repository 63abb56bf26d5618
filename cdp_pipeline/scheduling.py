"""Turn a connection's ``schedule:`` options into cron strings Dagster can run, and explain them.

Plain Python on purpose (no dagster import): the definitions layer turns each :class:`CronSpec`
into ``dg.ScheduleDefinition(cron_schedule=..., execution_timezone=spec.timezone)``. All specs of
one schedule share the time zone, so they can also go into a single definition as
``cron_schedule=[spec.cron for spec in specs]`` (Dagster fires on the union and runs a tick once
when two strings hit the same instant).

Semantics of the options (the user page ``docs/scheduling-and-alerts.md`` says the same):

* ``every_minutes: N`` fires at ``at`` and every N minutes after it, through the day; the count
  restarts at ``at`` every day. When N does not divide 24 hours (7, 11, 50 ...) the last gap before
  ``at`` is shorter than N. One option may need several cron strings, one per distinct set of
  minutes within an hour (every 7 minutes: hours 0, 7, 14, 21 share minutes 0, 7, ... 56 and so on).
* ``every_minutes`` with ``between: [start, end]`` fires at ``start`` and every N minutes after it
  while the time is not past ``end``: the end point fires only when the steps land on it exactly.
  ``at`` is not used then. A window whose end is earlier than its start runs past midnight.
* ``times_per_day: N`` spreads N runs evenly over 24 hours from ``at`` (minute precision,
  rounded down): 5 times from 06:00 is 06:00, 10:48, 15:36, 20:24, 01:12.
* ``days_of_week``, ``days_of_month`` and ``weekday_of_month`` fire once on each matching day at
  ``at``. A day of the month a month lacks (31 in April, 30 in February) is skipped, as cron does.
  ``weekday_of_month`` uses Dagster's cron forms ``2#2`` (second Tuesday) and ``L5`` (last Friday);
  both are accepted by Dagster 1.13's vendored croniter, so no filtering in the schedule function is
  needed.

Time zones and DST follow Dagster's evaluation (``dagster._utils.schedules``); the tests run the
generated strings through it and compare the fire times with written-out expectations:

* a cron string whose hour field is ``*`` (every N minutes dividing an hour) is tied to the clock:
  local times that do not exist on the spring-forward day are skipped, and in the repeated hour in
  autumn it fires in both passes;
* any other cron string fires once per matching local time: a time that does not exist moves to
  the end of the gap (02:30 in Warsaw on 2026-03-29 runs at 03:00), and a repeated time fires once,
  at its second (standard time) occurrence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from cdp_pipeline.config.schedules import Schedule

__all__ = ["CronSpec", "cron_specs", "describe"]

MINUTES_PER_DAY = 24 * 60

# Cron numbers days 0-6 from Sunday; Python's weekday() numbers them 0-6 from Monday.
_CRON_WEEKDAY = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_DAY_NAME = {
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}
_WEEK_ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", "last": "last"}


@dataclass(frozen=True)
class CronSpec:
    """One cron string of a schedule, with the time zone Dagster must evaluate it in."""

    cron: str
    timezone: str
    description: str


# --------------------------------------------------------------------------------------------------
# Schedule -> times of day -> cron strings


def _clock_minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _clock(minute_of_day: int) -> str:
    return f"{minute_of_day // 60:02d}:{minute_of_day % 60:02d}"


def _times_of_day(schedule: Schedule) -> list[int]:
    """The minutes of the day (0..1439) a schedule fires at, in firing order from its anchor."""
    anchor = _clock_minutes(schedule.at)
    if schedule.every_minutes is not None:
        step = schedule.every_minutes
        if schedule.between is not None:
            start, end = (_clock_minutes(c) for c in schedule.between)
            if start == end:
                # A zero-length window could mean "once" or "all day"; refuse rather than guess.
                raise ValueError(
                    f"between {list(schedule.between)} is an empty window; give two different times"
                )
            length = (end - start) % MINUTES_PER_DAY  # a window past midnight wraps
            return [(start + k * step) % MINUTES_PER_DAY for k in range(length // step + 1)]
        count = -(-MINUTES_PER_DAY // step)  # ceil: every k with k * step < 24 h
        return [(anchor + k * step) % MINUTES_PER_DAY for k in range(count)]
    if schedule.times_per_day is not None:
        n = schedule.times_per_day
        # Integer division keeps every time on a whole minute and never repeats one (n <= 96).
        return [(anchor + k * MINUTES_PER_DAY // n) % MINUTES_PER_DAY for k in range(n)]
    return [anchor]


def _day_fields(schedule: Schedule) -> tuple[str, str]:
    """The (day of month, day of week) cron fields."""
    if schedule.days_of_week is not None:
        return "*", _field((_CRON_WEEKDAY[d] for d in schedule.days_of_week), 0, 6)
    if schedule.days_of_month is not None:
        return ",".join(map(str, sorted(set(schedule.days_of_month)))), "*"
    if schedule.weekday_of_month is not None:
        wom = schedule.weekday_of_month
        day = _CRON_WEEKDAY[wom.day]
        # "2#2" and "L5" are croniter extensions; Dagster 1.13 accepts both (see the tests).
        return "*", f"L{day}" if wom.week == "last" else f"{day}#{wom.week}"
    return "*", "*"


def _field(values: Iterable[int], low: int, high: int) -> str:
    """A compact cron field for a set of numbers: ``*``, ``*/5``, ``2-59/5``, ``3-5`` or a list."""
    items = sorted(set(values))
    if items == list(range(low, high + 1)):
        return "*"
    if len(items) >= 3:
        step = items[1] - items[0]
        if all(b - a == step for a, b in pairwise(items)):
            first, last = items[0], items[-1]
            if first - step < low and last + step > high:  # the progression fills the whole range
                return f"*/{step}" if first == low else f"{first}-{high}/{step}"
            if step == 1:
                return f"{first}-{last}"
    return ",".join(map(str, items))


def cron_specs(schedule: Schedule) -> list[CronSpec]:
    """The cron strings (all in ``schedule.timezone``) whose union is the schedule.

    Hours that fire at the same minutes share one string, so every 5 minutes is one string and
    every 7 minutes is seven.
    """
    minutes_by_hour: dict[int, set[int]] = {}
    for minute_of_day in _times_of_day(schedule):
        minutes_by_hour.setdefault(minute_of_day // 60, set()).add(minute_of_day % 60)
    hours_by_minutes: dict[tuple[int, ...], list[int]] = {}
    for hour in sorted(minutes_by_hour):
        hours_by_minutes.setdefault(tuple(sorted(minutes_by_hour[hour])), []).append(hour)

    day_of_month, day_of_week = _day_fields(schedule)
    summary = describe(schedule)
    specs: list[CronSpec] = []
    groups = sorted(hours_by_minutes.items(), key=lambda item: item[1][0])
    for index, (minutes, hours) in enumerate(groups, start=1):
        cron = f"{_field(minutes, 0, 59)} {_field(hours, 0, 23)} {day_of_month} * {day_of_week}"
        if len(groups) == 1:
            description = summary
        else:
            times = [f"{h:02d}:{m:02d}" for h in hours for m in minutes]
            shown = ", ".join(times[:6]) + (f" ... ({len(times)} times)" if len(times) > 6 else "")
            description = f"{summary}; part {index} of {len(groups)}: {shown}"
        specs.append(CronSpec(cron=cron, timezone=schedule.timezone, description=description))
    return specs


# --------------------------------------------------------------------------------------------------
# Plain-English description for the UI


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _duration(minutes: int) -> str:
    if minutes == 1:
        return "minute"
    if minutes % 60 == 0:
        hours = minutes // 60
        return "hour" if hours == 1 else f"{hours} hours"
    return f"{minutes} minutes"


def describe(schedule: Schedule) -> str:
    """The schedule in plain English, e.g. "every 5 minutes" or "the second Tuesday of the month
    at 06:00 Europe/Warsaw"."""
    tz = schedule.timezone
    at = schedule.at
    anchor = _clock_minutes(at)

    if schedule.every_minutes is not None:
        step = schedule.every_minutes
        if schedule.between is not None:
            start, end = schedule.between
            text = f"every {_duration(step)} between {start} and {end} {tz}"
            times = _times_of_day(schedule)
            if times[-1] != _clock_minutes(end):
                text += f" (last run at {_clock(times[-1])})"
            return text
        if step == MINUTES_PER_DAY:
            return f"once a day at {at} {tz}"
        if 60 % step == 0:
            # A grid that divides the hour looks the same in every whole-hour time zone.
            offset = anchor % step
            if offset == 0:
                return "every minute" if step == 1 else f"every {_duration(step)}"
            past = [f":{m:02d}" for m in range(offset, 60, step)]
            return f"every {_duration(step)} at {_join(past)} past the hour"
        text = f"every {_duration(step)} from {at} {tz}"
        if MINUTES_PER_DAY % step:
            text += f", restarting at {at} every day"
        return text

    if schedule.times_per_day is not None:
        n = schedule.times_per_day
        if n == 1:
            return f"once a day at {at} {tz}"
        clocks = [_clock(t) for t in _times_of_day(schedule)]
        count = "twice a day" if n == 2 else f"{n} times a day"
        if n <= 8:
            return f"{count} at {_join(clocks)} {tz}"
        return f"{count}, evenly spread from {at} {tz}"

    if schedule.days_of_week is not None:
        order = list(_DAY_NAME)
        days = sorted(set(schedule.days_of_week), key=order.index)
        if len(days) == 7:
            return f"every day at {at} {tz}"
        if days == order[:5]:
            return f"every weekday (Monday to Friday) at {at} {tz}"
        return f"every {_join([_DAY_NAME[d] for d in days])} at {at} {tz}"

    if schedule.days_of_month is not None:
        month_days = sorted(set(schedule.days_of_month))
        text = f"on the {_join([_ordinal(d) for d in month_days])} of the month at {at} {tz}"
        if max(month_days) > 28:
            text += " (skipped in months without that day)"
        return text

    wom = schedule.weekday_of_month
    if wom is None:  # the model guarantees exactly one kind; a new kind must get its own text
        raise ValueError("schedule has none of every_minutes, times_per_day, days_of_week, days_of_month, weekday_of_month")
    text = f"the {_WEEK_ORDINAL[wom.week]} {_DAY_NAME[wom.day]} of the month at {at} {tz}"
    if wom.week == 5:
        text += " (skipped in months without one)"
    return text
