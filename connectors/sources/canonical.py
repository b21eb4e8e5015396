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
) -> Event:
    """``event_id`` is derived from the provider's own id, so a retry is the same event."""
    return {
        "event_id": f"{system}:{provider_event_id}",
        "event_type": event_type,
        "source_system": system,
        "event_time": event_time,
        "received_time": received,
        "identity": identity,
        "contact_id": None,
        "payload": payload,
    }


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def from_unix_ms(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)
