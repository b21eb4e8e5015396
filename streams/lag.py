"""Consumer lag, measured from Kafka rather than by the consumer: per partition of a
group's topics, the partition's end minus the group's committed offset.

Every member of a group measures the whole group, in a thread of its own (the dashboards
take the max over members). So the lag of a member that hangs keeps growing: on its own
``/metrics``, since the thread does not need the member's event loop, and on those of
the other members when it dies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)

from streams import metrics
from streams.settings import Settings

log = logging.getLogger("switchboard.lag")


class GroupLag:
    """The lag of consumer group ``group`` on ``topics``, reported to
    ``switchboard_consumer_lag_records`` every ``interval_s``.

    It asks with a consumer of its own that never joins the group (committed offsets and
    ListOffsets), not with the AdminClient: librdkafka 2.16's admin call for a group's
    offsets aborts the whole process when the group's coordinator broker dies meanwhile
    (tests/integration/test_faults.py kills it)."""

    def __init__(
        self, settings: Settings, group: str, topics: Sequence[str], interval_s: float = 5.0
    ) -> None:
        self.group = group
        self.topics = sorted(set(topics))
        self.interval_s = interval_s
        self.timeout_s = max(interval_s, 5.0)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                # The end a transactional consumer can reach: open transactions are not lag.
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        self._reported: set[tuple[str, str]] = set()
        self._stop = threading.Event()

    def measure(self) -> dict[tuple[str, int], int]:
        """Lag per (topic, partition). A partition the group never committed counts from
        its first record, as the group's consumers (auto.offset.reset=earliest) would."""
        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(self._partitions(topic))
        ]
        if not partitions:
            return {}
        found = self._consumer.committed(partitions, timeout=self.timeout_s)
        committed = {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
        ends = self._offsets(partitions, OFFSET_END)
        missing = [tp for tp in partitions if (tp.topic, tp.partition) not in committed]
        if missing:
            committed |= self._offsets(missing, OFFSET_BEGINNING)
        return {key: max(end - committed[key], 0) for key, end in ends.items()}

    def _partitions(self, topic: str) -> list[int]:
        # One topic's metadata: the whole cluster's (every topic of every application on
        # it) took this thread about a hundredth of a worker's CPU on a test broker.
        found = self._consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if found is None or found.error is not None:  # not created yet
            return []
        return list(found.partitions)

    def _offsets(self, partitions: list[TopicPartition], at: int) -> dict[tuple[str, int], int]:
        # ListOffsets for "latest" (-1) or "earliest" (-2), one request per leader.
        asked = [TopicPartition(tp.topic, tp.partition, at) for tp in partitions]
        answered = self._consumer.offsets_for_times(asked, timeout=self.timeout_s)
        for tp in answered:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {(tp.topic, tp.partition): tp.offset for tp in answered}

    def report(self) -> None:
        """Measure once and publish it; partitions no longer measured leave the gauge."""
        lag = self.measure()
        now = {(topic, str(partition)) for topic, partition in lag}
        for gone in self._reported - now:
            metrics.CONSUMER_LAG.remove(self.group, *gone)
        for (topic, partition), records in lag.items():
            metrics.CONSUMER_LAG.labels(self.group, topic, str(partition)).set(records)
        self._reported = now

    def start(self) -> threading.Thread:
        """Report every ``interval_s`` in a daemon thread until :meth:`stop`."""
        thread = threading.Thread(target=self._run, name=f"lag-{self.group}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report()
            except Exception as exc:  # Kafka away for a while: the next round tries again
                log.warning("consumer lag of %s not measured: %s", self.group, exc)
            self._stop.wait(self.interval_s)
        self._consumer.close()
