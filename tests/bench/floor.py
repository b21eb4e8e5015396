"""The floor every stage is measured against: a bare read-decode-encode-write loop with
Kafka transactions on the same broker (KIP-447: one transactional producer, the
consumer's group metadata in ``send_offsets_to_transaction``, input read
``read_committed``, a commit every ``interval_s`` or ``max_records``). No state, no rules:
what confluent-kafka and Avro alone cost per event on this machine."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka import group_consumer_config
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings


def drain(
    settings: Settings,
    topic: str,
    total: int,
    *,
    interval_s: float = 0.1,
    max_records: int = 5000,
    timeout_s: float = 600.0,
) -> float:
    """Seconds to carry ``total`` records of ``topic`` (contact events) through the loop
    into a topic of its own, from the first record in (the group's join is not the
    loop's cost) to the last commit."""
    registry = registry_client(settings.schema_registry_url)
    run = uuid.uuid4().hex[:8]
    out_topic = f"{topic}.floor-{run}"
    partitions = settings.partitions
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(out_topic, partitions, 1)]).values():
        future.result()
    # The input's subject serves both ways: the output needs no registration of its own.
    serde = AvroSerde(registry, "contact_event", topic, discriminator="event_type")
    consumer = Consumer(group_consumer_config(settings, f"floor-{run}"))
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "transactional.id": f"floor-{run}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions()
    consumer.subscribe([topic])
    done = 0
    positions: dict[int, int] = {}
    started: float | None = None
    deadline = time.perf_counter() + timeout_s
    producer.begin_transaction()
    last_commit = time.perf_counter()
    pending = 0
    try:
        while done < total:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"floor: {done} of {total} after {timeout_s}s")
            for message in consumer.consume(500, 0.05):
                if message.error():
                    raise KafkaException(message.error())
                started = started or time.perf_counter()
                event = serde.decode(message.value())
                key = event["contact_id"] or message.key()
                producer.produce(out_topic, key=key, value=serde.encode(event))
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # a consumed message's
                positions[partition] = offset + 1
                pending += 1
            now = time.perf_counter()
            if pending and (now - last_commit >= interval_s or pending >= max_records):
                offsets = [TopicPartition(topic, p, o) for p, o in positions.items()]
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
                producer.commit_transaction()
                done += pending
                pending = 0
                last_commit = now
                producer.begin_transaction()
        assert started is not None  # total > 0 records came in
        return time.perf_counter() - started
    finally:
        producer.abort_transaction()  # the one begun after the last commit (empty on success)
        consumer.close()
        for future in admin.delete_topics([out_topic]).values():
            future.result()
