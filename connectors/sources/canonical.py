"""Building canonical contact events (schemas/contact_event.avsc) from mapped fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.sources.base import Event


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


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def from_unix_ms(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)
