"""Building canonical contact events (schemas/contact_event.avsc) from mapped fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.sources.base import Event, Rejected


def event(
    *,
    system: str,
    provider_event_id: str,
    event_type: str,
    event_time: datetime,
    received: datetime,
    identity: dict[str, Any],
    payload: dict[str, Any],
    profile: dict[str, dict[str, str]] | None = None,
) -> Event:
    """``event_id`` is derived from the provider's own id, so a retry is the same event.
    ``profile`` is what the source knows of the person (``profile_of``)."""
    return {
        "event_id": f"{system}:{provider_event_id}",
        "event_type": event_type,
        "source_system": system,
        "event_time": event_time,
        "received_time": received,
        "identity": identity,
        "contact_id": None,
        "profile": profile or {},
        "payload": payload,
    }


def profile_of(origin: str, *, name: str | None = None, **fields: str | None) -> dict[str, Any]:
    """Profile values of one origin (see schemas/contact_event.avsc ``ProfileValue``),
    blanks left out. A full ``name`` fills first and last name where they are not given:
    the first word is the first name, the rest the last."""
    values = {k: v.strip() for k, v in fields.items() if v is not None and v.strip()}
    first, _, last = (name or "").strip().partition(" ")
    if first and "first_name" not in values:
        values["first_name"] = first
        if last.strip() and "last_name" not in values:
            values["last_name"] = last.strip()
    return {k: {"value": v, "origin": origin} for k, v in values.items()}


def from_unix(seconds: float, *, field: str) -> datetime:
    """``seconds`` since the epoch as a UTC time; Rejected naming ``field`` when it is no
    time a datetime can hold (NaN, infinite, or beyond year 9999)."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise Rejected(f"field {field}: {seconds!r} is not a Unix time", field=field) from None


def from_unix_ms(millis: int, *, field: str) -> datetime:
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        raise Rejected(f"field {field}: {millis!r} is not a Unix time in ms", field=field) from None


# No event of any source predates this: an earlier time is a default or a unit mistake.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def check_event_time(when: datetime, received: datetime, *, field: str, max_skew_s: float) -> None:
    """Rejected naming ``field`` unless ``when`` has a time zone and lies between
    EARLIEST_EVENT_TIME and ``max_skew_s`` after ``received``: a time far in the future
    would start clocks (SLA timers, decay) that no later event could stop."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise Rejected(f"field {field}: {when.isoformat()} has no time zone", field=field)
    if when < EARLIEST_EVENT_TIME:
        raise Rejected(f"field {field}: {when.isoformat()} is before the year 2000", field=field)
    ahead = (when - received).total_seconds()
    if ahead > max_skew_s:
        raise Rejected(
            f"field {field}: {when.isoformat()} is {ahead:.0f}s ahead of the gateway's clock "
            f"(max_event_skew_s is {max_skew_s:g})",
            field=field,
        )


# No call lasts longer: a provider's bigger number is a bug or an attack, and would skew
# talk-time totals and scoring rules on call length.
MAX_CALL_SECONDS = 86_400


def call_seconds(value: float | None) -> int:
    """A call's duration in whole seconds, clamped to 0..MAX_CALL_SECONDS."""
    return round(min(max(value or 0.0, 0.0), MAX_CALL_SECONDS))
