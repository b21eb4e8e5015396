"""Validation happens before anything is sent, and its errors name the field."""

from __future__ import annotations

import pytest

from streams.serde import AvroSerde, SchemaViolation, UndecodableMessage, registry_client
from tests.records import contact_event

# Nothing below talks to the registry: validation and framing checks are local.
OFFLINE = registry_client("http://127.0.0.1:9/unused")


def events_serde() -> AvroSerde:
    return AvroSerde(OFFLINE, "contact_event", "t", discriminator="event_type")


def test_a_valid_event_validates_and_names_its_payload_branch() -> None:
    prepared = events_serde().validate(contact_event())
    assert prepared["payload"][0] == "io.switchboard.events.FormSubmitted"


def test_wrong_type_names_the_field_and_what_was_expected() -> None:
    record = contact_event(identity={"email": 42})
    with pytest.raises(SchemaViolation) as caught:
        events_serde().validate(record)
    assert str(caught.value) == (
        "contact_event: field Identity.email: got 42 (int), expected null or string"
    )


def test_missing_required_payload_field_is_named() -> None:
    record = contact_event(event_type="MEETING_CANCELLED", payload={"reason": "no longer needed"})
    with pytest.raises(SchemaViolation, match=r"field MeetingCancelled\.meeting_id: got nothing"):
        events_serde().validate(record)


def test_payload_must_match_the_event_type() -> None:
    # A form payload under MEETING_BOOKED lacks meeting_id and starts_at.
    with pytest.raises(SchemaViolation, match=r"MeetingBooked\.(meeting_id|starts_at)"):
        events_serde().validate(contact_event(event_type="MEETING_BOOKED"))


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(SchemaViolation, match="event_type"):
        events_serde().validate(contact_event(event_type=None))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message value"),
        (b'{"event_id": 1}', "first byte is 0x7b"),
        (b"\x00\x00\x01", "3 bytes in all"),
    ],
)
def test_unframed_bytes_are_undecodable_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(UndecodableMessage, match=reason):
        events_serde().decode(data)
