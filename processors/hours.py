"""Working hours in a time zone: is an instant inside them? Local wall-clock time decides,
so a 09:00 start stays 09:00 across daylight-saving changes."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from streams.rules import RuleModel

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like Europe/Lisbon)"
        ) from None
    return value


class BusinessHours(RuleModel):
    timezone: str = "UTC"
    start: time = time(9, 0)
    end: time = time(17, 30)
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))

    _zone = field_validator("timezone")(known_zone)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _wall_clock(cls, value: Any) -> Any:
        # YAML reads an unquoted 9:00 as the number 540 (base 60), not as a time.
        if not isinstance(value, str | time):
            raise ValueError(f'{value!r} is not a time of day: write it in quotes, like "09:00"')
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a local time of day has no offset: the time zone is `timezone`")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> BusinessHours:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def contains(self, at: datetime) -> bool:
        if at.tzinfo is None:
            raise ValueError("an instant needs a time zone")
        local = at.astimezone(ZoneInfo(self.timezone))
        return WEEKDAYS[local.weekday()] in self.days and self.start <= local.time() < self.end
