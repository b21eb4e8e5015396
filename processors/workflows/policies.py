"""What every workflow shares (``policies.yaml`` beside the workflow files): the default
time zone, quiet hours, frequency caps per channel, the lifecycle stage order and how
old a trigger may be."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Any

from pydantic import Field, field_validator

from processors.durations import Duration
from processors.hours import known_zone
from processors.workflows.conditions import ContactChannel
from streams.rules import RuleModel

POLICIES_FILE = "policies.yaml"


class Cap(RuleModel):
    max: int = Field(ge=1)
    per: Duration


class QuietHours(RuleModel):
    """No message to a contact between ``start`` and ``end`` on their clock; a send that
    falls inside waits for the end."""

    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _wall_clock(cls, value: Any) -> Any:
        if not isinstance(value, str | time):
            raise ValueError(f'{value!r} is not a time of day: write it in quotes, like "21:00"')
        return value


# HubSpot's lifecycle stages, in order: a workflow never moves a contact back along them.
LIFECYCLE_STAGES = [
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
]


class Policies(RuleModel):
    """What every workflow shares (``policies.yaml`` beside the workflows)."""

    version: int = 1
    timezone: str = Field("UTC", description="The contact's time zone when their profile has none.")
    quiet_hours: QuietHours | None = None
    frequency_caps: dict[ContactChannel, Cap] = Field(default_factory=dict)
    lifecycle_stages: list[str] = Field(default_factory=lambda: list(LIFECYCLE_STAGES))
    max_trigger_age: Duration = Field(
        timedelta(days=1),
        description="An older triggering event (a backfill, a replay) enrols nobody.",
    )

    _zone = field_validator("timezone")(known_zone)
