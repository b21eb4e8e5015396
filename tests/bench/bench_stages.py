"""The stateful core's CPU per event with the broker left out, on this machine: a
worker's engine (identity, contact and router stages; decode, stage, encode, table writes
and the checkpoint's changelog records) takes a recorded backlog of the load generator's
multi-system feed, and what it writes to its own inputs comes back to it through an
in-process queue instead of Kafka.

bench_core measures the real thing (broker, transactions, librdkafka); its runs spread by
about 12% on this shared machine, too much to see a change of a few per cent. Here the
rounds of one run agree within about 2% (process CPU time, no other process involved);
separate runs drift with the machine's load by more, so compare code before and after a
change in alternated runs (or `farm-bench --vs`). It also prints the records the worker
writes per event, by topic: most of its Kafka work.

    .venv/bin/python -m tests.bench.bench_stages [--events 30000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, Message, Producer

from connectors.sources.loadgen import run_load
from processors.commands import collect_for_a_worker
from processors.worker import build
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, REP_ROSTER
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh
from tests.kafka_helpers import read_all

PARTITIONS = 6
BATCH = 1000  # records per read, as the engine's consumer reads them


class Record:
    """A consumed record, as the engine reads one (confluent_kafka.Message's methods)."""

    __slots__ = ("_key", "_offset", "_partition", "_timestamp", "_topic", "_value")

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._timestamp = key, value, int(time.time() * 1000)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return 1, self._timestamp  # TIMESTAMP_CREATE_TIME


class Loopback:
    """The worker's producer, in process: what it writes to a topic it reads is queued to
    be read again (keyed records partitioned by a hash of the key, like Kafka's); the rest
    is counted. Transactions commit at once."""

    def __init__(self, inputs: set[str]) -> None:
        self.inputs = inputs
        self.queued: deque[Record] = deque()
        self.written: Counter[str] = Counter()
        self._next: Counter[tuple[str, int]] = Counter()

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        on_delivery: Any = None,
    ) -> None:
        self.written[topic] += 1
        if topic in self.inputs:
            if partition is None:
                partition = zlib.crc32(key or b"") % PARTITIONS
            offset = self._next[(topic, partition)]
            self._next[(topic, partition)] += 1
            self.queued.append(Record(topic, partition, offset, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, *args: Any) -> None:
        pass

    def commit_transaction(self, timeout: float = 0) -> None:
        pass


class Group:
    """The worker's consumer, as far as a checkpoint asks it anything."""

    def consumer_group_metadata(self) -> None:
        return None


def recorded(settings: Settings, events: int) -> list[Record]:
    """The rep roster and a backlog of ``events`` from the load generator, as Kafka holds
    them (Avro with the registry's schema ids)."""
    asyncio.run(run_load(settings, rate=0, count=events, seed=3, target="kafka"))
    found = []
    for spec in (REP_ROSTER, CONTACT_EVENTS):
        topic = spec.full_name(settings)
        for m in read_all(settings, topic):
            found.append(Record(topic, m.partition() or 0, m.offset() or 0, m.key(), m.value()))
    return found


def drain(settings: Settings, backlog: list[Record], events: int) -> dict[str, Any]:
    """One worker's engine over ``backlog``: CPU seconds, and the records it wrote."""
    engine, _ = build(settings)
    loop = Loopback(set(engine.routes))
    engine.producer = cast(Producer, loop)
    engine.consumer = cast(Consumer, Group())
    everything = set(range(PARTITIONS))
    for table in engine.tables:
        for partition in everything:
            table.store(partition)
    engine.hold(everything)
    for callback in engine.assigned_callbacks:
        callback(everything)
    collect_for_a_worker()
    pending = deque(backlog)
    since_checkpoint = 0
    started = time.process_time()
    while pending or loop.queued:
        # Each read: what the worker wrote to itself first, then the backlog, as a worker
        # that keeps up with its own records reads them.
        batch: list[Record] = []
        while loop.queued and len(batch) < BATCH:
            batch.append(loop.queued.popleft())
        while pending and len(batch) < BATCH:
            batch.append(pending.popleft())
        for record in batch:
            engine.process(cast(Message, record))
        since_checkpoint += len(batch)
        if since_checkpoint >= engine.checkpoint_records or not pending:
            engine.checkpoint()
            since_checkpoint = 0
    cpu = time.process_time() - started
    gc.unfreeze()
    return {
        "cpu_s": cpu,
        "written_per_event": {t: n / events for t, n in loop.written.most_common()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = new_run()
    settings = fresh(run, PARTITIONS)
    backlog = recorded(settings, args.events)
    events = sum(1 for r in backlog if r.topic() == CONTACT_EVENTS.full_name(settings))
    print(f"stages without the broker: 1 worker, {events} events, {args.rounds} rounds")
    rounds = []
    for n in range(args.rounds):
        each = settings.model_copy(update={"data_dir": Path(".run/bench") / run / f"r{n}"})
        rounds.append(drain(each, backlog, events))
        print(f"  round {n + 1}: {1e6 * rounds[-1]['cpu_s'] / events:6.1f} us CPU per event")
    per_event = statistics.median(r["cpu_s"] for r in rounds) / events
    written = rounds[-1]["written_per_event"]
    print(
        f"  median {1e6 * per_event:6.1f} us CPU per event"
        f" (one core spent on it alone: {1 / per_event:,.0f} events/s)"
    )
    prefix = settings.topic_prefix
    print(f"  records written per event: {sum(written.values()):.2f}")
    for topic, n in written.items():
        print(f"    {n:5.2f}  {topic.removeprefix(prefix).removeprefix(settings.app_id + '-')}")
    results = {"events": events, "cpu_us_per_event": 1e6 * per_event, "rounds": rounds}
    print(f"  written to {write_results('stages', results)}")


if __name__ == "__main__":
    run_then_clean(main)
