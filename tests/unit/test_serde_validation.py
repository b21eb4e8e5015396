"""Validation happens before anything is sent, and its errors name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient

import schemas
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


class OneSchema(SchemaRegistryClient):
    """A registry that knows one schema, as id 1 (nothing leaves the process)."""

    def __init__(self, schema_text: str) -> None:
        super().__init__({"url": "http://127.0.0.1:9/unused"})
        self.schema = Schema(schema_text, "AVRO")

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        assert schema_id == 1
        return self.schema

    def lookup_schema(self, *args: Any, **kwargs: Any) -> RegisteredSchema:
        return RegisteredSchema("t-value", 1, 1, None, self.schema)


def test_a_leading_serde_reads_the_first_fields_and_a_whole_serde_all() -> None:
    whole = AvroSerde(
        OneSchema(schemas.schema_text("contact_event")),
        "contact_event",
        "t",
        discriminator="event_type",
    )
    data = whole.encode(contact_event())
    head = whole.leading("identity").decode(data)
    assert list(head) == [
        "event_id",
        "event_type",
        "source_system",
        "event_time",
        "received_time",
        "identity",
    ]
    assert head == {k: v for k, v in whole.decode(data).items() if k in head}
    assert whole.decode(data)["payload"]["form_id"] == "quote-request"


def test_a_leading_serde_decodes_whole_what_another_version_wrote() -> None:
    older = json.loads(schemas.schema_text("contact_event"))
    older["doc"] = "the same fields, another text: another schema to the registry"
    serde = AvroSerde(
        OneSchema(json.dumps(older)), "contact_event", "t", discriminator="event_type"
    )
    data = serde.encode(contact_event())
    assert serde.leading("identity").decode(data)["payload"]["form_id"] == "quote-request"


def test_a_leading_serde_names_a_field_the_schema_lacks() -> None:
    with pytest.raises(ValueError, match="contact_event has no field 'identiy'"):
        events_serde().leading("identiy")
