"""Valid contract records for tests to start from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def contact_event(**overrides: Any) -> dict[str, Any]:
    """A form submission from a person known by e-mail and phone."""
    at = datetime(2026, 11, 20, 14, 30, 5, 123000, tzinfo=UTC)
    record: dict[str, Any] = {
        "event_id": "typeform:resp-8812",
        "event_type": "FORM_SUBMITTED",
        "source_system": "typeform",
        "event_time": at,
        "received_time": at,
        "identity": {
            "email": "ana.silva@example.com",
            "phone": "+351912345678",
            "crm_id": None,
            "external_ids": {"typeform": "resp-8812"},
        },
        "contact_id": None,
        "profile": {"first_name": {"value": "Ana", "origin": "self"}},
        "payload": {
            "form_id": "quote-request",
            "form_name": "Request a quote",
            "page_url": "https://example.com/pricing",
            "fields": {"service": "boiler installation", "postcode": "1000-001"},
            "utm": {"utm_source": "google"},
        },
    }
    record.update(overrides)
    return record


def crm_command(
    kind: str,
    contact_id: str,
    payload: dict[str, Any],
    command_id: str = "",
    issued_at: datetime | None = None,
) -> dict[str, Any]:
    """A CRM command as the processors write it (schemas/crm_command.avsc)."""
    return {
        "command_id": command_id or f"cmd-{kind.lower()}-{contact_id}",
        "command_type": kind,
        "contact_id": contact_id,
        "issued_at": issued_at or datetime(2026, 11, 20, 15, 0, tzinfo=UTC),
        "causation_event_id": "evt-1",
        "payload": payload,
    }
