"""streams.kafka.arrived against the real broker: a reader takes what has come at once,
and a record that trickles in is read when it comes, not when the wait runs out (the
workers, the sinks and the caller lookup all read this way)."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka import arrived, producer_config
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_a_trickled_record_is_read_when_it_comes_and_a_backlog_at_once(
    settings: Settings,
) -> None:
    topic = f"{settings.topic_prefix}arrived"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    out = Producer(producer_config(settings))
    reader = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.app_id}-r"}
    )
    try:
        reader.assign([TopicPartition(topic, 0, 0)])
        assert arrived(reader, 1000, 0.5) == []

        def later() -> None:
            time.sleep(0.5)
            out.produce(topic, value=b"one")
            out.flush(10)

        threading.Thread(target=later).start()
        started = time.monotonic()
        [first] = arrived(reader, 1000, 30.0)
        # consume(1000, 30) would have waited the 30 s out for a batch of one.
        assert first.value() == b"one" and time.monotonic() - started < 15

        for n in range(5):
            out.produce(topic, value=f"{n}".encode())
        out.flush(10)
        found: list[Message] = []
        while len(found) < 5:
            batch = arrived(reader, 3, 1.0)
            assert len(batch) <= 3
            found += batch
        assert [m.value() for m in found] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        reader.close()
