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

With ``--instructions`` it counts instead the instructions the drain takes, under
valgrind's callgrind (about 50 times slower, so over fewer events): the count repeats
within 0.1% whatever else the machine does, so a change of 1% shows in one run of each
side. ``--backlog FILE`` keeps the recorded backlog (the first run) for the next runs
to replay: the load generator's feed differs a little from one recording to the next.
Over one backlog the clock stands at the recording's time and the records are stamped
alike, so the drain writes the same bytes every run; it prints a digest of them per
topic, which a change meant only to be faster must leave as it was.

    .venv/bin/python -m tests.bench.bench_stages [--events 30000] [--rounds 5]
    .venv/bin/python -m tests.bench.bench_stages --instructions [--events 2000] [--backlog FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, Message, Producer

from connectors.sources.loadgen import run_load
from processors.commands import collect_for_a_worker
from processors.worker import build
from streams.clock import FileClock
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
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value
        self._timestamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms

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

    def __init__(self, stamp_ms: int | None = None) -> None:
        self.inputs: set[str] = set()  # the engine's (drain sets them)
        self.stamp_ms = stamp_ms  # the time records read again carry (None: now)
        self.queued: deque[Record] = deque()
        self.written: Counter[str] = Counter()
        self.digests: dict[str, Any] | None = None  # topic -> sha256 of its records, if kept
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
        if self.digests is not None:
            digest = self.digests.setdefault(topic, hashlib.sha256())
            digest.update(repr((key, value, partition)).encode())
        if topic in self.inputs:
            if partition is None:
                partition = zlib.crc32(key or b"") % PARTITIONS
            offset = self._next[(topic, partition)]
            self._next[(topic, partition)] += 1
            self.queued.append(Record(topic, partition, offset, key, value, self.stamp_ms))

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


def drain(
    settings: Settings,
    backlog: list[Record],
    events: int,
    loop: Loopback | None = None,
    timed: Callable[[bool], None] = lambda on: None,
) -> dict[str, Any]:
    """One worker's engine over ``backlog``: CPU seconds, and the records it wrote.
    ``timed`` is told when the drain starts (True) and ends (False)."""
    engine, _ = build(settings)
    loop = loop or Loopback()
    loop.inputs = set(engine.routes)
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
    timed(True)
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
    timed(False)
    gc.unfreeze()
    return {
        "cpu_s": cpu,
        "written_per_event": {t: n / events for t, n in loop.written.most_common()},
    }


def saved(settings: Settings, events: int, path: Path) -> None:
    """Keep a recorded backlog in ``path`` for ``--instructions`` runs to share: the
    settings (its topics' names), its rows, and the time of the recording, at which the
    replay's clock stands still."""
    backlog = recorded(settings, events)
    events = sum(1 for r in backlog if r.topic() == CONTACT_EVENTS.full_name(settings))
    rows = [(r.topic(), r.partition(), r.offset(), r.key(), r.value()) for r in backlog]
    path.write_bytes(pickle.dumps((settings, events, rows, datetime.now(UTC))))


def counted(path: Path) -> None:
    """The drain's instructions per event over the backlog kept in ``path``, counted by
    callgrind in a child process (``--replay``), and the digests of what it wrote."""
    settings, events, _, _ = pickle.loads(path.read_bytes())
    print(f"stages without the broker: 1 worker, {events} events of {path}, instructions")
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={Path(folder) / 'callgrind.out'}",
                sys.executable,
                "-m",
                "tests.bench.bench_stages",
                "--replay",
                str(path),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # sets iterate alike run to run
            check=True,
        )
    found = re.search(r"Collected : (\d+)", child.stderr)
    assert found is not None, child.stderr[-2000:]
    print(f"  {int(found.group(1)) / events:,.0f} instructions per event (callgrind)")
    prefix = settings.topic_prefix
    print("  what it wrote, a digest per topic (the same bytes: the same digests):")
    for topic, (digest, n) in json.loads(child.stdout.splitlines()[-1]).items():
        short = topic.removeprefix(prefix).removeprefix(settings.app_id + "-")
        print(f"    {digest} {n:6d}  {short}")


def replay(path: Path) -> None:
    """``counted``'s child, under callgrind: instrumentation on for the drain alone."""
    settings, events, rows, recorded_at = pickle.loads(path.read_bytes())
    with tempfile.TemporaryDirectory() as folder:
        clock = Path(folder) / "clock"
        FileClock.write(clock, recorded_at)
        fixed = settings.model_copy(update={"clock": f"file:{clock}", "data_dir": Path(folder)})
        stamp_ms = int(recorded_at.timestamp() * 1000)
        backlog = [Record(t, p, o, k, v, stamp_ms) for t, p, o, k, v in rows]
        loop = Loopback(stamp_ms)
        loop.digests = {}

        def instrument(on: bool) -> None:
            switch = ["callgrind_control", "--instr=on" if on else "--instr=off", str(os.getpid())]
            subprocess.run(switch, check=True, capture_output=True)

        drain(fixed, backlog, events, loop, instrument)
    digests = {t: (d.hexdigest()[:16], loop.written[t]) for t, d in sorted(loop.digests.items())}
    print(json.dumps(digests))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--backlog", type=Path, help="--instructions: kept here, or reused")
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return
    if args.instructions:
        with tempfile.TemporaryDirectory() as folder:
            path = args.backlog or Path(folder) / "backlog"
            if not path.exists():
                saved(fresh(new_run(), PARTITIONS), args.events or 2_000, path)
            counted(path)
        return
    run = new_run()
    settings = fresh(run, PARTITIONS)
    backlog = recorded(settings, args.events or 30_000)
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
    if "--replay" in sys.argv:
        main()  # the child: it made no topics
    else:
        run_then_clean(main)
