"""Bytes that are not valid Avro reach the dead-letter topic with the reason, and the
worker goes on processing what comes after them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, DEAD_LETTERS, ensure_topics
from tests.kafka_helpers import consume, producer, running_worker, worker_metric
from tests.records import contact_event

pytestmark = pytest.mark.integration

KEY = b"email:ana.silva@example.com"


def test_undecodable_bytes_are_dead_lettered_and_the_worker_carries_on(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_catalog(registry, settings)
    events_topic = CONTACT_EVENTS.full_name(settings)
    events = AvroSerde(registry, "contact_event", events_topic, discriminator="event_type")
    letters = AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(settings))
    wrong_schema_id = b"\x00\x7f\xff\xff\xff" + b"\x02xy"
    bad_values = [b'{"email": "ana@example.com"}', wrong_schema_id]

    out = producer(settings)
    # All on one key, so one partition keeps the order: good, bad, bad, good.
    out.produce(events_topic, key=KEY, value=events.encode(contact_event(event_id="e-1")))
    for value in bad_values:
        out.produce(events_topic, key=KEY, value=value, headers={"origin": b"test"})
    out.produce(events_topic, key=KEY, value=events.encode(contact_event(event_id="e-2")))
    assert out.flush(30) == 0

    with running_worker(settings, tmp_path / "worker.log") as worker:
        dead = consume(settings, DEAD_LETTERS.full_name(settings), 2)
        decoded = [letters.decode(message.value()) for message in dead]

        assert [d["original_value"] for d in decoded] == bad_values
        assert all(m.key() == KEY for m in dead)
        first, second = decoded
        assert first["stage"] == "identity"
        assert first["error_type"] == "UndecodableMessage"
        assert first["original_topic"] == events_topic
        assert first["original_offset"] == 1 and second["original_offset"] == 2
        assert first["original_headers"] == {"origin": b"test"}
        assert "not Confluent-framed Avro: first byte is 0x7b" in first["reason"]
        assert "schema id 2147483647" in second["reason"]
        assert first["dead_letter_id"] != second["dead_letter_id"]

        # Both good events, the one after the bad bytes included, were processed.
        processed = 'switchboard_events_total{event_type="FORM_SUBMITTED"'
        deadline = time.monotonic() + 30
        while worker_metric(settings, processed) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker_metric(settings, processed) == 2
        assert worker_metric(settings, "switchboard_dead_letters_total{") == 2
        assert worker.poll() is None


def test_an_event_dated_far_ahead_is_dead_lettered_by_the_worker(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Issue 20, item 6, the worker's side: an event written to Kafka by something other
    than the gateway (an import, another producer) and dated 2099 would start clocks no
    later event could stop. The identity stage refuses it: a dead letter naming the
    field, no contact, and the next event goes on."""
    ensure_topics(settings)
    register_catalog(registry, settings)
    events_topic = CONTACT_EVENTS.full_name(settings)
    events = AvroSerde(registry, "contact_event", events_topic, discriminator="event_type")
    letters = AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(settings))
    future = contact_event(event_id="e-2099", event_time=datetime(2099, 1, 1, tzinfo=UTC))
    out = producer(settings)
    out.produce(events_topic, key=KEY, value=events.encode(future))
    out.produce(events_topic, key=KEY, value=events.encode(contact_event(event_id="e-now")))
    assert out.flush(30) == 0

    with running_worker(settings, tmp_path / "worker.log"):
        [dead] = [letters.decode(m.value()) for m in consume(settings, letters.topic, 1)]
        assert dead["stage"] == "identity" and dead["error_type"] == "Refused"
        assert dead["reason"].startswith("field event_time: 2099-01-01T00:00:00+00:00 is ")
        assert dead["original_offset"] == 0
        processed = 'switchboard_events_total{event_type="FORM_SUBMITTED"'
        deadline = time.monotonic() + 30
        while worker_metric(settings, processed, stage="contact") < 1:
            assert time.monotonic() < deadline, "the event after it was not processed"
            time.sleep(0.2)
        time.sleep(1)
        assert worker_metric(settings, processed, stage="contact") == 1
