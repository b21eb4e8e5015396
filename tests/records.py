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
