"""A key written by any Switchboard producer lands on the partition the Java client (and
Kafka Connect, Kafka Streams) would choose for it, so tables and repartition topics stay
co-partitioned with topics that other producers write."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message

from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.kafka_helpers import producer

pytestmark = pytest.mark.integration


def java_murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, as a signed 32-bit int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
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

    java = {key: (java_murmur2(key) & 0x7FFFFFFF) % settings.partitions for key in keys}
    assert landed == java
    assert len(set(landed.values())) == settings.partitions  # the keys spread over all
