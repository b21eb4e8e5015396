"""A key written by a source connector lands on the partition Faust's producer would
choose for it, so Faust tables and repartition topics stay co-partitioned with the
topics the connectors write."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import KafkaError, Message

from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.kafka_helpers import producer

pytestmark = pytest.mark.integration


def test_connector_and_faust_partitioners_agree(settings: Settings) -> None:
    ensure_topics(settings)
    topic = CONTACT_EVENTS.full_name(settings)
    keys = [f"email:person{i}@example.com".encode() for i in range(60)]
    landed: dict[bytes, int] = {}

    def record(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        landed[message.key() or b""] = message.partition() or 0

    out = producer(settings)
    for key in keys:
        out.produce(topic, key=key, value=b"x", on_delivery=record)
    assert out.flush(30) == 0

    partitions = list(range(settings.partitions))
    faust_choice = DefaultPartitioner()
    assert landed == {key: faust_choice(key, partitions, partitions) for key in keys}
    assert len(set(landed.values())) == settings.partitions  # the keys spread over all
