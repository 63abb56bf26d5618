"""Schedule options -> cron strings and descriptions, and the fire times Dagster's own cron
evaluation gives those strings (``dagster._utils.schedules`` in 1.13, see
``cdp_pipeline_tests.fixtures.schedule_fire_times``) checked against hand-written expectations."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string

from cdp_pipeline.config.schedules import Schedule
from cdp_pipeline.scheduling import CronSpec, cron_specs, describe
from cdp_pipeline_tests.fixtures.schedule_fire_times import matches, next_fire_times

WARSAW = ZoneInfo("Europe/Warsaw")
NEW_YORK = ZoneInfo("America/New_York")
UTC = UTC


def _s(**options) -> Schedule:
    return Schedule.model_validate(options)


def _local(times: list[datetime]) -> list[str]:
    """Fire times as local wall clock with the offset, so DST shows in the expectation."""
    return [t.strftime("%Y-%m-%d %H:%M%z") for t in times]


# ----------------------------------------------------------------------------------- cron strings

CRON_CASES = [
    ({"every_minutes": 5}, ["*/5 * * * *"]),  # SARE's import
    ({"every_minutes": 15, "at": "00:05"}, ["5-59/15 * * * *"]),
    ({"every_minutes": 60}, ["0 * * * *"]),
    ({"every_minutes": 90}, ["0 */3 * * *", "30 1-23/3 * * *"]),
    ({"every_minutes": 120, "at": "01:00"}, ["0 1-23/2 * * *"]),
    ({"every_minutes": 1440, "at": "06:00"}, ["0 6 * * *"]),
    (
        {"every_minutes": 7},
        [
            "*/7 */7 * * *",
            "3-59/7 1-23/7 * * *",
            "6-59/7 2-23/7 * * *",
            "2-59/7 3-23/7 * * *",
            "5-59/7 4-23/7 * * *",
            "1-59/7 5-23/7 * * *",
            "4-59/7 6-23/7 * * *",
        ],
    ),
    ({"every_minutes": 30, "between": ["03:00", "06:00"]}, ["0,30 3-5 * * *", "0 6 * * *"]),  # Netmera
    ({"every_minutes": 40, "between": ["03:00", "06:00"]}, ["0,40 3,5 * * *", "20 4 * * *"]),
    ({"every_minutes": 30, "between": ["22:00", "01:00"]}, ["0,30 0,22,23 * * *", "0 1 * * *"]),
    ({"times_per_day": 4, "at": "06:00"}, ["0 */6 * * *"]),
    ({"times_per_day": 3, "at": "07:00"}, ["0 7-23/8 * * *"]),
    ({"times_per_day": 5, "at": "06:00"}, ["12 1 * * *", "0 6 * * *", "48 10 * * *", "36 15 * * *", "24 20 * * *"]),
    ({"days_of_week": ["wed", "mon"], "at": "06:00"}, ["0 6 * * 1,3"]),
    ({"days_of_week": ["mon", "tue", "wed", "thu", "fri"], "at": "06:00"}, ["0 6 * * 1-5"]),  # the demo
    ({"days_of_week": ["sun", "tue", "thu", "sat"], "at": "06:00"}, ["0 6 * * */2"]),
    ({"days_of_week": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "at": "06:00"}, ["0 6 * * *"]),
    ({"days_of_month": [15, 1, 31], "at": "06:00"}, ["0 6 1,15,31 * *"]),
    ({"weekday_of_month": {"week": 2, "day": "tue"}, "at": "06:00"}, ["0 6 * * 2#2"]),
    ({"weekday_of_month": {"week": "last", "day": "fri"}, "at": "06:00"}, ["0 6 * * L5"]),
    ({"weekday_of_month": {"week": 5, "day": "sun"}, "at": "06:00"}, ["0 6 * * 0#5"]),
]


@pytest.mark.parametrize(("options", "crons"), CRON_CASES, ids=[str(o) for o, _ in CRON_CASES])
def test_cron_strings(options, crons):
    specs = cron_specs(_s(timezone="Europe/Warsaw", **options))
    assert [spec.cron for spec in specs] == crons
    # Dagster must evaluate every string in the connection's zone, never the daemon's: a schedule
    # written for 06:00 Warsaw must not run at 06:00 wherever the daemon happens to be.
    assert {spec.timezone for spec in specs} == {"Europe/Warsaw"}
    for spec in specs:
        assert is_valid_cron_string(spec.cron), spec.cron
    assert dg.ScheduleDefinition(
        name="check",
        cron_schedule=[spec.cron for spec in specs],
        execution_timezone=specs[0].timezone,
        target=dg.AssetSelection.all(),
    ).cron_schedule


def test_parts_are_described():
    specs = cron_specs(_s(every_minutes=30, between=["03:00", "06:00"], timezone="Europe/Warsaw"))
    assert specs == [
        CronSpec(
            "0,30 3-5 * * *",
            "Europe/Warsaw",
            "every 30 minutes between 03:00 and 06:00 Europe/Warsaw; part 1 of 2: "
            "03:00, 03:30, 04:00, 04:30, 05:00, 05:30",
        ),
        CronSpec(
            "0 6 * * *",
            "Europe/Warsaw",
            "every 30 minutes between 03:00 and 06:00 Europe/Warsaw; part 2 of 2: 06:00",
        ),
    ]


def test_dagster_cron_forms_for_weekday_of_month():
    """What Dagster 1.13's vendored croniter accepts: ``2#2`` and ``L5`` yes, ``5L`` no. The day
    range fallback ("8-14 with weekday 2") would be wrong: cron ORs the two day fields."""
    assert is_valid_cron_string("0 6 * * 2#2")
    assert is_valid_cron_string("0 6 * * L5")
    assert not is_valid_cron_string("0 6 * * 5L")
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    fallback = list(itertools.islice(cron_string_iterator(start, "0 6 8-14 * 2", "UTC"), 3))
    assert [t.day for t in fallback] == [6, 8, 9]  # a Tuesday outside 8-14, then every day in it


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"every_minutes": 5}, "every 5 minutes"),
        ({"every_minutes": 1}, "every minute"),
        ({"every_minutes": 60}, "every hour"),
        ({"every_minutes": 15, "at": "00:05"}, "every 15 minutes at :05, :20, :35 and :50 past the hour"),
        ({"every_minutes": 90, "timezone": "Europe/Warsaw"}, "every 90 minutes from 00:00 Europe/Warsaw"),
        (
            {"every_minutes": 7, "at": "06:00"},
            "every 7 minutes from 06:00 UTC, restarting at 06:00 every day",
        ),
        ({"every_minutes": 1440, "at": "06:00"}, "once a day at 06:00 UTC"),
        (
            {"every_minutes": 30, "between": ["03:00", "06:00"], "timezone": "Europe/Warsaw"},
            "every 30 minutes between 03:00 and 06:00 Europe/Warsaw",
        ),
        (
            {"every_minutes": 40, "between": ["03:00", "06:00"]},
            "every 40 minutes between 03:00 and 06:00 UTC (last run at 05:40)",
        ),
        ({"times_per_day": 1, "at": "07:15"}, "once a day at 07:15 UTC"),
        ({"times_per_day": 2, "at": "07:15"}, "twice a day at 07:15 and 19:15 UTC"),
        (
            {"times_per_day": 5, "at": "06:00", "timezone": "Europe/Warsaw"},
            "5 times a day at 06:00, 10:48, 15:36, 20:24 and 01:12 Europe/Warsaw",
        ),
        ({"times_per_day": 24}, "24 times a day, evenly spread from 00:00 UTC"),
        ({"days_of_week": ["wed", "mon"], "at": "06:00"}, "every Monday and Wednesday at 06:00 UTC"),
        (
            {"days_of_week": ["fri", "mon", "tue", "wed", "thu"], "at": "06:00", "timezone": "Europe/Amsterdam"},
            "every weekday (Monday to Friday) at 06:00 Europe/Amsterdam",
        ),
        (
            {"days_of_week": ["sun", "sat", "fri", "thu", "wed", "tue", "mon"], "at": "06:00"},
            "every day at 06:00 UTC",
        ),
        (
            {"days_of_month": [31, 1, 15], "at": "06:00"},
            "on the 1st, 15th and 31st of the month at 06:00 UTC (skipped in months without that day)",
        ),
        ({"days_of_month": [2, 3, 22], "at": "06:00"}, "on the 2nd, 3rd and 22nd of the month at 06:00 UTC"),
        (
            {"weekday_of_month": {"week": 2, "day": "tue"}, "at": "06:00", "timezone": "Europe/Warsaw"},
            "the second Tuesday of the month at 06:00 Europe/Warsaw",
        ),
        ({"weekday_of_month": {"week": "last", "day": "fri"}}, "the last Friday of the month at 00:00 UTC"),
        (
            {"weekday_of_month": {"week": 5, "day": "sun"}},
            "the fifth Sunday of the month at 00:00 UTC (skipped in months without one)",
        ),
    ],
)
def test_describe(options, text):
    assert describe(_s(**options)) == text


# ----------------------------------------------------------------------------------- fire times


def test_sare_every_5_minutes_across_both_dst_changes():
    schedule = _s(every_minutes=5, timezone="Europe/Warsaw")
    spring = next_fire_times(schedule, datetime(2026, 3, 29, 1, 50, tzinfo=WARSAW), 4)
    # 02:00-02:59 does not exist that night; the clock-tied grid just continues at 03:00.
    assert _local(spring) == [
        "2026-03-29 01:50+0100",
        "2026-03-29 01:55+0100",
        "2026-03-29 03:00+0200",
        "2026-03-29 03:05+0200",
    ]
    autumn = next_fire_times(schedule, datetime(2026, 10, 25, 2, 50, tzinfo=WARSAW), 4)
    # 02:00-02:59 happens twice: the grid runs through both passes.
    assert _local(autumn) == [
        "2026-10-25 02:50+0200",
        "2026-10-25 02:55+0200",
        "2026-10-25 02:00+0100",
        "2026-10-25 02:05+0100",
    ]
    for times in (next_fire_times(schedule, datetime(2026, 3, 29, 0, 0, tzinfo=WARSAW), 60),
                  next_fire_times(schedule, datetime(2026, 10, 25, 1, 0, tzinfo=WARSAW), 60)):
        gaps = {b.timestamp() - a.timestamp() for a, b in zip(times, times[1:], strict=False)}
        assert gaps == {300.0}


def test_netmera_nightly_window():
    schedule = _s(every_minutes=30, between=["03:00", "06:00"], timezone="Europe/Warsaw")
    times = next_fire_times(schedule, datetime(2026, 10, 24, 12, 0, tzinfo=WARSAW), 9)
    assert _local(times) == [
        "2026-10-25 03:00+0100",
        "2026-10-25 03:30+0100",
        "2026-10-25 04:00+0100",
        "2026-10-25 04:30+0100",
        "2026-10-25 05:00+0100",
        "2026-10-25 05:30+0100",
        "2026-10-25 06:00+0100",  # the end point is exact, so it runs
        "2026-10-26 03:00+0100",
        "2026-10-26 03:30+0100",
    ]
    uneven = _s(every_minutes=40, between=["03:00", "06:00"], timezone="Europe/Warsaw")
    times = next_fire_times(uneven, datetime(2026, 6, 1, 0, 0, tzinfo=WARSAW), 6)
    assert _local(times)[:5] == [
        "2026-06-01 03:00+0200",
        "2026-06-01 03:40+0200",
        "2026-06-01 04:20+0200",
        "2026-06-01 05:00+0200",
        "2026-06-01 05:40+0200",  # 06:20 would be past the end
    ]
    assert _local(times)[5] == "2026-06-02 03:00+0200"


def test_window_through_the_dst_hours():
    schedule = _s(every_minutes=30, between=["01:00", "04:00"], timezone="Europe/Warsaw")
    spring = next_fire_times(schedule, datetime(2026, 3, 29, 0, 0, tzinfo=WARSAW), 5)
    # 02:00 and 02:30 do not exist: they move to 03:00, which runs once.
    assert _local(spring) == [
        "2026-03-29 01:00+0100",
        "2026-03-29 01:30+0100",
        "2026-03-29 03:00+0200",
        "2026-03-29 03:30+0200",
        "2026-03-29 04:00+0200",
    ]
    autumn = next_fire_times(schedule, datetime(2026, 10, 25, 0, 0, tzinfo=WARSAW), 7)
    # 02:00 and 02:30 happen twice: they run once, in the second (standard time) pass.
    assert _local(autumn) == [
        "2026-10-25 01:00+0200",
        "2026-10-25 01:30+0200",
        "2026-10-25 02:00+0100",
        "2026-10-25 02:30+0100",
        "2026-10-25 03:00+0100",
        "2026-10-25 03:30+0100",
        "2026-10-25 04:00+0100",
    ]


def test_every_7_minutes_restarts_at_the_anchor():
    schedule = _s(every_minutes=7, at="06:00", timezone="UTC")
    times = next_fire_times(schedule, datetime(2026, 5, 1, 5, 40, tzinfo=UTC), 5)
    # 06:00 + 205 * 7 min = 05:55 next day; the day restarts at 06:00, a 5-minute gap.
    assert _local(times) == [
        "2026-05-01 05:41+0000",
        "2026-05-01 05:48+0000",
        "2026-05-01 05:55+0000",
        "2026-05-01 06:00+0000",
        "2026-05-01 06:07+0000",
    ]
    # 206 runs a day (06:00 + k * 7 min, k = 0..205), then 06:00 again.
    day = next_fire_times(schedule, datetime(2026, 5, 1, 6, 0, tzinfo=UTC), 207)
    assert len({t.strftime("%H:%M") for t in day[:206]}) == 206
    assert day[-2:] == [datetime(2026, 5, 2, 5, 55, tzinfo=UTC), datetime(2026, 5, 2, 6, 0, tzinfo=UTC)]


def test_times_per_day_spread_evenly_and_across_dst():
    schedule = _s(times_per_day=5, at="06:00", timezone="Europe/Warsaw")
    times = next_fire_times(schedule, datetime(2026, 3, 28, 12, 0, tzinfo=WARSAW), 6)
    assert _local(times) == [
        "2026-03-28 15:36+0100",
        "2026-03-28 20:24+0100",
        "2026-03-29 01:12+0100",
        "2026-03-29 06:00+0200",  # wall-clock times hold after the change
        "2026-03-29 10:48+0200",
        "2026-03-29 15:36+0200",
    ]


def test_days_of_week_in_new_york_dst():
    schedule = _s(days_of_week=["sun"], at="02:30", timezone="America/New_York")
    spring = next_fire_times(schedule, datetime(2026, 3, 1, 12, 0, tzinfo=NEW_YORK), 3)
    assert _local(spring) == [
        "2026-03-08 03:00-0400",  # 02:30 does not exist on 8 March: it runs at the end of the gap
        "2026-03-15 02:30-0400",
        "2026-03-22 02:30-0400",
    ]
    at_130 = _s(days_of_week=["sun"], at="01:30", timezone="America/New_York")
    autumn = next_fire_times(at_130, datetime(2026, 10, 31, 12, 0, tzinfo=NEW_YORK), 2)
    # 01:30 happens twice on 1 November: one run, at 01:30 EST.
    assert _local(autumn) == ["2026-11-01 01:30-0500", "2026-11-08 01:30-0500"]


def test_second_tuesday():
    schedule = _s(weekday_of_month={"week": 2, "day": "tue"}, at="06:00", timezone="Europe/Warsaw")
    times = next_fire_times(schedule, datetime(2026, 1, 1, tzinfo=UTC), 5)
    assert _local(times) == [
        "2026-01-13 06:00+0100",
        "2026-02-10 06:00+0100",
        "2026-03-10 06:00+0100",
        "2026-04-14 06:00+0200",
        "2026-05-12 06:00+0200",
    ]
    assert matches(schedule, datetime(2026, 4, 14, 6, 0, tzinfo=WARSAW))
    assert matches(schedule, datetime(2026, 4, 14, 4, 0, tzinfo=UTC))  # the same instant
    assert not matches(schedule, datetime(2026, 4, 7, 6, 0, tzinfo=WARSAW))  # first Tuesday
    assert not matches(schedule, datetime(2026, 4, 21, 6, 0, tzinfo=WARSAW))  # third Tuesday
    assert not matches(schedule, datetime(2026, 4, 14, 6, 1, tzinfo=WARSAW))


def test_last_and_fifth_weekday():
    last_friday = _s(weekday_of_month={"week": "last", "day": "fri"}, at="18:00")
    times = next_fire_times(last_friday, datetime(2026, 1, 1, tzinfo=UTC), 7)
    assert [t.date().isoformat() for t in times] == [
        "2026-01-30",
        "2026-02-27",
        "2026-03-27",
        "2026-04-24",
        "2026-05-29",
        "2026-06-26",
        "2026-07-31",
    ]
    fifth_sunday = _s(weekday_of_month={"week": 5, "day": "sun"}, at="18:00")
    times = next_fire_times(fifth_sunday, datetime(2026, 1, 1, tzinfo=UTC), 4)
    assert [t.date().isoformat() for t in times] == ["2026-03-29", "2026-05-31", "2026-08-30", "2026-11-29"]


def test_days_of_month_skip_short_months():
    schedule = _s(days_of_month=[1, 15, 31], at="06:00", timezone="Europe/Warsaw")
    times = next_fire_times(schedule, datetime(2026, 1, 20, tzinfo=UTC), 9)
    assert [t.date().isoformat() for t in times] == [
        "2026-01-31",
        "2026-02-01",
        "2026-02-15",  # no 31 February
        "2026-03-01",
        "2026-03-15",
        "2026-03-31",
        "2026-04-01",
        "2026-04-15",  # no 31 April
        "2026-05-01",
    ]
    assert all(t.strftime("%H:%M") == "06:00" for t in times)


def test_empty_window_is_refused():
    with pytest.raises(ValueError, match="empty window"):
        cron_specs(_s(every_minutes=30, between=["03:00", "03:00"]))


def test_engine_modules_do_not_import_dagster():
    code = (
        "import sys, cdp_pipeline.scheduling, cdp_pipeline.notifications; "
        "sys.exit('dagster' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
