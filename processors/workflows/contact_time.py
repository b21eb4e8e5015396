"""Time on the contact's clock: their time zone, the next time their clock shows a time
of day, and the end of quiet hours. Waits (``wait_until``) and sends (quiet hours) use it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from processors.hours import WEEKDAYS, known_zone
from processors.sla import whole_ms
from processors.state import ContactState
from processors.workflows.policies import QuietHours


def contact_zone(state: ContactState, default: str) -> ZoneInfo:
    """The contact's time zone (their profile's ``timezone``), else ``default``."""
    named = state.profile.get("timezone")
    if named:
        try:
            return ZoneInfo(known_zone(named))
        except ValueError:
            pass  # a CRM's free-text zone we cannot read: the default serves
    return ZoneInfo(default)


def next_local(now: datetime, at: time, zone: ZoneInfo, days: Sequence[str] | None) -> datetime:
    """The first instant after ``now`` when the contact's clock shows ``at`` on one of
    ``days`` (any day if None)."""
    local = now.astimezone(zone)
    for ahead in range(8):
        day = local.date() + timedelta(days=ahead)
        candidate = datetime.combine(day, at, tzinfo=zone)
        if candidate > local and (days is None or WEEKDAYS[day.weekday()] in days):
            return whole_ms(candidate.astimezone(now.tzinfo))
    raise ValueError("no day to wait for")  # unreachable: a week has every weekday


def quiet_until(now: datetime, quiet: QuietHours, zone: ZoneInfo) -> datetime | None:
    """When the quiet hours around ``now`` end on the contact's clock; None outside them."""
    local = now.astimezone(zone).time()
    if quiet.start <= quiet.end:
        inside = quiet.start <= local < quiet.end
    else:  # across midnight
        inside = local >= quiet.start or local < quiet.end
    return next_local(now, quiet.end, zone, None) if inside else None
