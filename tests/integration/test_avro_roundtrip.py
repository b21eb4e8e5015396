"""An Avro contact event goes through the real broker and registry and comes back equal."""

from __future__ import annotations

import io
import json

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer

import schemas
from streams.registry import register_catalog
from streams.serde import MAGIC_BYTE, AvroSerde, SerdeError
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.kafka_helpers import consume, producer
from tests.records import contact_event

pytestmark = pytest.mark.integration


def test_contact_event_round_trips_through_kafka_and_the_registry(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    ensure_topics(settings)
    registered = {r.subject: r.schema_id for r in register_catalog(registry, settings)}
    topic = CONTACT_EVENTS.full_name(settings)
    serde = AvroSerde(registry, "contact_event", topic, discriminator="event_type")
    sent = [
        contact_event(),
        contact_event(
            event_id="calendly:inv-1",
            event_type="MEETING_BOOKED",
            source_system="calendly",
            payload={"meeting_id": "inv-1", "starts_at": contact_event()["event_time"]},
        ),
    ]

    out = producer(settings)
    for record in sent:
        out.produce(topic, key=b"email:ana.silva@example.com", value=serde.encode(record))
    assert out.flush(30) == 0

    received = consume(settings, topic, len(sent))
    values = [message.value() or b"" for message in received]
    assert all(value[0] == MAGIC_BYTE for value in values)
    # The wire carries the id the registry gave the contract for this topic.
    assert {int.from_bytes(v[1:5], "big") for v in values} == {registered[f"{topic}-value"]}

    decoded = [serde.decode(value) for value in values]
    expected_meeting = {
        **sent[1]["payload"],
        "ends_at": None,
        "title": None,
        "host": None,
        "location": None,
    }
    assert decoded[0] == sent[0]
    assert decoded[1] == {**sent[1], "payload": expected_meeting}


def test_data_from_a_newer_producer_decodes_with_the_current_contract(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    """A producer already on a newer schema (one more optional field) beside this
    consumer: the consumer resolves the data to the contract it knows."""
    ensure_topics(settings)
    register_catalog(registry, settings)
    topic = CONTACT_EVENTS.full_name(settings)
    newer = schemas.schema_json("contact_event")
    newer["fields"].append({"name": "tenant_id", "type": ["null", "string"], "default": None})
    newer_id = registry.register_schema(f"{topic}-value", Schema(json.dumps(newer), "AVRO"))

    record = contact_event()
    serde = AvroSerde(registry, "contact_event", topic, discriminator="event_type")
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(newer), {**serde.validate(record), "tenant_id": "acme"})
    framed = bytes([MAGIC_BYTE]) + newer_id.to_bytes(4, "big") + body.getvalue()

    assert serde.decode(framed) == record


def test_encoding_for_a_topic_whose_schema_is_not_registered_says_what_to_run(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    serde = AvroSerde(registry, "contact_event", f"{settings.topic_prefix}never-registered")
    with pytest.raises(SerdeError, match=r"run `switchboard schemas register`"):
        serde.encode(contact_event())
