"""A key written by any Switchboard producer lands on the partition the Java client (and
Kafka Connect, Kafka Streams) would choose for it, so tables and repartition topics stay
co-partitioned with topics that other producers write."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message

from streams.kafka import murmur2, partition_of
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.kafka_helpers import producer

pytestmark = pytest.mark.integration


def java_murmur2(data: bytes) -> int:
    """As org.apache.kafka.common.utils.Utils.murmur2 returns it: a signed 32-bit int."""
    h = murmur2(data)
    return h - (1 << 32) if h & 0x80000000 else h


def test_the_reference_matches_the_java_clients_own_test_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2.
    assert java_murmur2(b"21") == -973932308
    assert java_murmur2(b"foobar") == -790332482
    assert java_murmur2(b"a-little-bit-long-string") == -985981536
    assert java_murmur2(b"a-little-bit-longer-string") == -1486304829
    assert java_murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert java_murmur2(b"abc") == 479470107


def test_switchboard_and_java_partitioners_agree(settings: Settings) -> None:
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

    java = {key: partition_of(key, settings.partitions) for key in keys}
    assert landed == java
    assert len(set(landed.values())) == settings.partitions  # the keys spread over all
