"""Client settings every Switchboard producer shares."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.settings import Settings

log = logging.getLogger("switchboard.kafka")


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer that waits for every in-sync replica.

    ``murmur2_random`` is the Java client's partitioner (``murmur2`` below): a key lands
    on the partition Kafka Streams, Kafka Connect or any Java producer would pick, so
    tables and repartition topics stay co-partitioned with topics others write.
    librdkafka's own default (CRC32) would put the same key elsewhere."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "message.max.bytes": settings.kafka_max_message_bytes,
        # Uncompressed: events are small, and any consumer can read them.
        "log_level": 4,
    } | overrides


def group_consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer in ``group_id`` that reads only committed records (an aborted
    transaction's are none), from the earliest when the group has no offsets, and commits
    no offset by itself: its owner commits what it handled (commit_batch, or a worker's
    transaction), or nothing (a reader by assignment)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    } | overrides


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, unsigned (the Java client's partitioner; librdkafka's
    ``murmur2_random`` for keyed records)."""
    m, h = 0x5BD1E995, 0x9747B28C ^ len(data)
    whole = len(data) // 4
    for k in struct.unpack_from(f"<{whole}I", data):
        k = (k * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[whole * 4 :]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition every Switchboard producer (and the Java client) writes ``key`` to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def publish(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes, bytes | None]],
    timeout: float = 30.0,
) -> None:
    """Write ``(key, value)`` records to ``topic`` (a ``None`` value is a tombstone) and
    wait until Kafka has acknowledged them all: a ConnectionError when it has not within
    ``timeout``. For the few records a command writes, not for a stream."""
    producer = Producer(producer_config(settings))
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    left = producer.flush(timeout)
    if left:
        raise ConnectionError(f"{left} records not acknowledged by Kafka within {timeout:g} s")


def read_topic(
    settings: Settings, topic: str, timeout: float = 30.0, since_ms: int | None = None
) -> list[Message]:
    """Every committed message now in ``topic``, by partition assignment (no consumer group);
    with ``since_ms``, those from the first with a timestamp at or after it (Unix ms).

    Done when the position reaches each partition's end as it was at the start; positions,
    unlike message offsets, move past transaction markers."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
        starts = {p: OFFSET_BEGINNING for p in partitions}
        if since_ms is not None:
            asked = [TopicPartition(topic, p, since_ms) for p in partitions]
            for tp in consumer.offsets_for_times(asked, timeout=10):
                # -1: nothing that recent; the partition is read from its end (nothing).
                starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition]
            partitions = {p: v for p, v in partitions.items() if starts[p] < ends[p]}
            if not partitions:
                return []
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                found.append(message)
                continue
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] for tp in positions if ends[tp.partition]):
                break
        return found
    finally:
        consumer.close()


def arrived(consumer: Consumer, most: int, wait: float) -> list[Message]:
    """What has arrived, up to ``most`` records; if nothing has, the first record to come
    within ``wait`` seconds, and what came with it. consume() alone waits out its whole
    timeout unless ``most`` records come: with records trickling in, that is latency."""
    found: list[Message] = consumer.consume(most, 0)
    if found:
        return found
    first = consumer.poll(wait)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)] if most > 1 else [first]


def commit_batch(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Commit the offsets past ``messages``, synchronously. A commit refused because the
    partitions moved in a rebalance is only logged: their new owner handles the batch
    again, which its consumers' idempotency (keys, event ids) makes harmless."""
    ends: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (str(m.topic()), int(m.partition() or 0))
        ends[tp] = max(ends.get(tp, -1), int(m.offset() or 0) + 1)
    offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        log.warning("commit of %d offsets failed: %s", len(offsets), exc)


def watermarks(reader: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """A partition's (low, high) offsets, asked again while its leader is moving (a topic
    created a moment ago, a broker that died, a new leader whose high watermark is not
    caught up yet)."""
    for attempt in range(60):
        try:
            low, high = reader.get_watermark_offsets(tp, timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() not in _LEADER_MOVING:
                raise
            log.info("watermarks of %s[%d]: %s; asking again", tp.topic, tp.partition, exc)
            time.sleep(min(0.1 * (attempt + 1), 1.0))
    raise TimeoutError(f"no leader answers for {tp.topic}[{tp.partition}]")


_LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.OFFSET_NOT_AVAILABLE,
}
