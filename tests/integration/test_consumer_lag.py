"""Consumer lag as streams.lag measures it, against the real broker: committed offsets
against each partition's read_committed end."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from streams.kafka import producer_config
from streams.lag import GroupLag
from streams.settings import Settings

pytestmark = pytest.mark.integration


def create_topic(settings: Settings, name: str, partitions: int) -> str:
    topic = f"{settings.topic_prefix}{name}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    return topic


def commit(settings: Settings, group: str, *offsets: TopicPartition) -> None:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=list(offsets), asynchronous=False)
    finally:
        consumer.close()


def test_lag_is_the_end_minus_the_committed_offset_and_counts_from_the_start_before_a_commit(
    settings: Settings,
) -> None:
    topic = create_topic(settings, "lag", 2)
    out = Producer(producer_config(settings))
    for partition, count in ((0, 10), (1, 5)):
        for i in range(count):
            out.produce(topic, value=f"{i}".encode(), partition=partition)
    assert out.flush(30) == 0
    group = f"{settings.app_id}-lag"
    commit(settings, group, TopicPartition(topic, 0, 4))
    lag = GroupLag(settings, group, [topic])

    assert lag.measure() == {(topic, 0): 6, (topic, 1): 5}
    lag.report()
    labels = {"group": group, "topic": topic, "partition": "0"}
    assert REGISTRY.get_sample_value("switchboard_consumer_lag_records", labels) == 6

    commit(settings, group, TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 5))
    assert lag.measure() == {(topic, 0): 0, (topic, 1): 0}


def test_a_caught_up_transactional_partition_reads_the_markers_after_its_last_record(
    settings: Settings,
) -> None:
    """Two producers' transactions open at once, as a stage's per-partition producers
    write to one downstream partition: both commit markers follow the last record."""
    topic = create_topic(settings, "lag-tx", 1)
    producers = []
    for n in range(2):
        out = Producer(producer_config(settings, **{"transactional.id": f"{topic}-tx{n}"}))
        out.init_transactions(30)
        out.begin_transaction()
        out.produce(topic, value=f"{n}".encode(), partition=0)
        assert out.flush(30) == 0
        producers.append(out)
    for out in producers:
        out.commit_transaction(30)
    group = f"{settings.app_id}-lag-tx"
    # Records at 0 and 1, markers at 2 and 3: a consumer commits 2 after the last record.
    commit(settings, group, TopicPartition(topic, 0, 2))

    assert GroupLag(settings, group, [topic]).measure() == {(topic, 0): 2}
