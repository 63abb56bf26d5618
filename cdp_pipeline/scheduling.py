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
  needed. :func:`matches` exists anyway for callers that want to check an instant.

Time zones and DST follow Dagster's evaluation (``dagster._utils.schedules``), so that
:func:`next_fire_times` agrees with what the daemon will do; the tests cross-check it:

* a cron string whose hour field is ``*`` (every N minutes dividing an hour) is tied to the clock:
  local times that do not exist on the spring-forward day are skipped, and in the repeated hour in
  autumn it fires in both passes;
* any other cron string fires once per matching local time: a time that does not exist moves to
  the end of the gap (02:30 in Warsaw on 2026-03-29 runs at 03:00), and a repeated time fires once,
  at its second (standard time) occurrence.
"""

from __future__ import annotations

import calendar
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from cdp_pipeline.config.schedules import Schedule

__all__ = ["CronSpec", "cron_specs", "describe", "next_fire_times", "cron_fire_times", "matches"]

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

# Every valid cron string fires at least once in any 8 years (29 February can skip a leap year at
# a century); a longer stretch without a matching day means the string never fires again.
_SCAN_DAYS = 8 * 366 + 2


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
        if all(b - a == step for a, b in zip(items, items[1:])):
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
        times = [_clock(t) for t in _times_of_day(schedule)]
        count = "twice a day" if n == 2 else f"{n} times a day"
        if n <= 8:
            return f"{count} at {_join(times)} {tz}"
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
        days = sorted(set(schedule.days_of_month))
        text = f"on the {_join([_ordinal(d) for d in days])} of the month at {at} {tz}"
        if max(days) > 28:
            text += " (skipped in months without that day)"
        return text

    wom = schedule.weekday_of_month
    assert wom is not None  # the model guarantees exactly one kind
    text = f"the {_WEEK_ORDINAL[wom.week]} {_DAY_NAME[wom.day]} of the month at {at} {tz}"
    if wom.week == 5:
        text += " (skipped in months without one)"
    return text


# --------------------------------------------------------------------------------------------------
# Fire times: a small evaluator for the cron strings this module emits, with Dagster's DST rules


@dataclass(frozen=True)
class _Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int] | None  # None: any day of the month
    weekdays: frozenset[int] | None  # cron numbering, 0 = Sunday; None: any
    nth: tuple[int, int] | None  # (cron weekday, 1..5 or -1 for the last one of the month)

    @property
    def every_hour(self) -> bool:
        # Dagster treats a wildcard hour field differently around DST changes (module docstring).
        return len(self.hours) == 24


def _parse_field(text: str, low: int, high: int) -> tuple[int, ...]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first_text, last_text = body.split("-")
            first, last = int(first_text), int(last_text)
        else:
            first = int(body)
            last = high if step_text else first
        if not (low <= first <= last <= high) or step < 1:
            raise ValueError(f"cron field {text!r} is out of range {low}-{high}")
        values.update(range(first, last + 1, step))
    return tuple(sorted(values))


def _parse_cron(cron: str) -> _Cron:
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron string {cron!r} must have 5 fields")
    minute, hour, day_of_month, month, day_of_week = fields
    if month != "*":
        raise ValueError(f"cron string {cron!r}: only '*' is supported for the month")
    days = None if day_of_month == "*" else frozenset(_parse_field(day_of_month, 1, 31))
    weekdays: frozenset[int] | None = None
    nth: tuple[int, int] | None = None
    if day_of_week.startswith("L"):
        nth = (int(day_of_week[1:]) % 7, -1)
    elif "#" in day_of_week:
        weekday_text, n_text = day_of_week.split("#")
        nth = (int(weekday_text) % 7, int(n_text))
    elif day_of_week != "*":
        weekdays = frozenset(d % 7 for d in _parse_field(day_of_week, 0, 7))  # 7 is Sunday too
    return _Cron(_parse_field(minute, 0, 59), _parse_field(hour, 0, 23), days, weekdays, nth)


def _day_matches(cron: _Cron, day: date) -> bool:
    cron_weekday = (day.weekday() + 1) % 7
    if cron.nth is not None:
        weekday, n = cron.nth
        if cron_weekday != weekday:
            return False
        if n == -1:
            return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        return (day.day - 1) // 7 + 1 == n
    dom_ok = cron.days is None or day.day in cron.days
    dow_ok = cron.weekdays is None or cron_weekday in cron.weekdays
    if cron.days is not None and cron.weekdays is not None:
        return dom_ok or dow_ok  # cron's rule when both fields are restricted
    return dom_ok and dow_ok


def _exists(wall: datetime) -> bool:
    back = wall.astimezone(UTC).astimezone(wall.tzinfo)
    return back.replace(tzinfo=None, fold=0) == wall.replace(tzinfo=None, fold=0)


def _resolve(wall: datetime, every_hour: bool) -> list[datetime]:
    """The instants a local wall time stands for, under Dagster's DST rules."""
    if not _exists(wall):
        if every_hour:
            return []
        # Move to the end of the gap: the first local minute that exists after it.
        moved = wall
        for _ in range(24 * 60):
            moved = moved.replace(tzinfo=None) + timedelta(minutes=1)
            moved = moved.replace(tzinfo=wall.tzinfo)
            if _exists(moved):
                return [moved]
        raise AssertionError(f"no existing local time after {wall}")
    first, second = wall.replace(fold=0), wall.replace(fold=1)
    if first.utcoffset() != second.utcoffset():  # repeated in autumn
        return [first, second] if every_hour else [second]
    return [first]


def _iter_cron(cron: _Cron, tz: ZoneInfo, start: datetime) -> Iterator[datetime]:
    """Fire times of one cron string at or after ``start``, in ascending order."""
    # Every instant of an earlier local date lies before start (moved DST times stay on their day).
    day = start.astimezone(tz).date()
    start_ts = start.timestamp()
    idle_days = 0
    while idle_days < _SCAN_DAYS:
        idle_days += 1
        if _day_matches(cron, day):
            idle_days = 0
            instants: list[datetime] = []
            for hour in cron.hours:
                for minute in cron.minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
                    instants.extend(_resolve(wall, cron.every_hour))
            instants.sort(key=lambda dt: dt.timestamp())
            for instant in instants:
                if instant.timestamp() >= start_ts:
                    yield instant
        day += timedelta(days=1)


def _dedup(instants: Iterable[datetime], count: int) -> list[datetime]:
    result: list[datetime] = []
    last: float | None = None
    for instant in instants:
        if len(result) >= count:
            break
        ts = instant.timestamp()
        # Two cron strings (or two moved DST times) can name the same instant: it runs once.
        if last is None or ts > last:
            result.append(instant)
            last = ts
    return result


def _check_aware(start: datetime) -> None:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware (a naive time is ambiguous across time zones)")


def cron_fire_times(spec: CronSpec, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times of one cron string, at or after ``start``."""
    _check_aware(start)
    return _dedup(_iter_cron(_parse_cron(spec.cron), ZoneInfo(spec.timezone), start), count)


def next_fire_times(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times at or after ``start`` (aware, in the schedule's time zone),
    as Dagster's daemon would fire ``cron_specs(schedule)``."""
    _check_aware(start)
    tz = ZoneInfo(schedule.timezone)
    iterators = [_iter_cron(_parse_cron(spec.cron), tz, start) for spec in cron_specs(schedule)]
    return _dedup(heapq.merge(*iterators, key=lambda dt: dt.timestamp()), count)


def matches(schedule: Schedule, moment: datetime) -> bool:
    """Whether the schedule fires at exactly this (aware) instant."""
    _check_aware(moment)
    upcoming = next_fire_times(schedule, moment, 1)
    return bool(upcoming) and upcoming[0].timestamp() == moment.timestamp()
