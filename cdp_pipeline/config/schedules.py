"""Schedule options of a connection, as the seeds list them: every X minutes, N times per day,
days of the week, days of the month, weekday of the month; each at a time, in a time zone."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.csv_options import StrictModel

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class WeekdayOfMonth(StrictModel):
    """E.g. the second Tuesday: ``{week: 2, day: tue}``; ``week: last`` for the last one."""

    week: Literal[1, 2, 3, 4, 5, "last"]
    day: Weekday


class Schedule(StrictModel):
    """Exactly one of the five kinds; ``at`` is the time of day, ``timezone`` an IANA name."""

    every_minutes: int | None = Field(default=None, ge=1, le=1440)
    times_per_day: int | None = Field(default=None, ge=1, le=96)
    days_of_week: list[Weekday] | None = None
    days_of_month: list[int] | None = None
    weekday_of_month: WeekdayOfMonth | None = None
    at: str = "00:00"
    #: for every_minutes: only inside this daily window, e.g. ["03:00", "06:00"] (Netmera's nightly reports).
    between: tuple[str, str] | None = None
    timezone: str = "UTC"
    #: the goals this schedule runs; all goals of the connection when omitted.
    goals: list[str] | None = None

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"time {value!r} must be HH:MM (24-hour)")
        return value

    @field_validator("between")
    @classmethod
    def _window(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is not None:
            for clock in value:
                if not _CLOCK.match(clock):
                    raise ValueError(f"time {clock!r} must be HH:MM (24-hour)")
        return value

    @field_validator("days_of_month")
    @classmethod
    def _days(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(d < 1 or d > 31 for d in value)):
            raise ValueError("days_of_month takes days 1 to 31")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Warsaw") from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        kinds = [
            name
            for name in ("every_minutes", "times_per_day", "days_of_week", "days_of_month", "weekday_of_month")
            if getattr(self, name) is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a schedule takes exactly one of every_minutes, times_per_day, days_of_week, days_of_month, "
                f"weekday_of_month (got {', '.join(kinds) or 'none'})"
            )
        if self.between is not None and self.every_minutes is None:
            raise ValueError("between only goes with every_minutes")
        return self

    @property
    def kind(self) -> str:
        for name in ("every_minutes", "times_per_day", "days_of_week", "days_of_month", "weekday_of_month"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated schedule without a kind")
