"""Benchmark of the durable SLA timers on this machine.

* holds: what one worker keeps per pending timer, measured with tracemalloc over
  ``--held`` timers (one per contact, as an assignment's first-touch clock): the timers
  table's values as the memory store keeps them, and the in-memory schedule; reported
  per million. Also the time to rebuild the schedule from the table (a rebalance).
* fires: a real worker holding ``--pending`` timers (leads routed through the pipeline
  and assigned), then the file clock moves past their due time; timers fired per second
  until every one has fired (due notice through Kafka, the firing, its reminder and its
  audit entry, exactly-once), and the worker's resident memory before and after.

    .venv/bin/python -m tests.bench.bench_timers [--held 1000000] [--pending 3000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from processors.sla import Timer, TimerBook
from processors.timers import Schedule, stored_timers
from streams.clock import FileClock
from streams.serde import AvroSerde, registry_client
from streams.topics import CONTACT_EVENTS
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh
from tests.integration.test_sla_timers import POLICY, lead
from tests.kafka_helpers import get, producer, running_worker

T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


def table_values(count: int) -> dict[str, str]:
    """The timers table as the memory store holds it: contact id -> TimerBook JSON."""
    values = {}
    for n in range(count):
        contact_id = uuid.UUID(int=n).hex  # contact ids are uuid hex, as minted
        timer = Timer(
            policy="first-touch-hot",
            started_at=T0,
            breach_at=T0 + timedelta(minutes=5),
            due_at=T0 + timedelta(minutes=5, seconds=n % 3600),
            owner_id="rep-1",
            cause=f"assigned-{n}",
        )
        book = TimerBook(partition=n % 6, timers={timer.timer_id: timer})
        values[contact_id] = book.model_dump_json(exclude_defaults=True)
    return values


def holds(count: int, partitions: int = 6) -> dict[str, Any]:
    owned = set(range(partitions))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    values = table_values(count)
    table_bytes = tracemalloc.get_traced_memory()[0] - base
    schedule = Schedule()
    schedule.rebuild(stored_timers(values.items(), owned))
    schedule_bytes = tracemalloc.get_traced_memory()[0] - base - table_bytes
    tracemalloc.stop()
    del schedule
    gc.collect()
    schedule = Schedule()  # timed again untraced: tracemalloc slows allocation down
    start = time.perf_counter()
    schedule.rebuild(stored_timers(values.items(), owned))
    rebuild_s = time.perf_counter() - start
    assert len(schedule) == count
    start = time.perf_counter()
    fired = len(schedule.pop_due(T0 + timedelta(days=1)))
    pop_s = time.perf_counter() - start
    per_million = 1_000_000 / count
    return {
        "timers": count,
        "table_mb_per_million": table_bytes * per_million / 2**20,
        "schedule_mb_per_million": schedule_bytes * per_million / 2**20,
        "bytes_per_timer": (table_bytes + schedule_bytes) / count,
        "rebuild_s": rebuild_s,
        "rebuild_per_s": count / rebuild_s,
        "schedule_pops_per_s": fired / pop_s,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(port: int, name: str) -> float:
    body = get(f"http://127.0.0.1:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def fires(pending: int, partitions: int) -> dict[str, Any]:
    run = new_run()
    directory = Path(".run/bench") / run
    settings = fresh(run, partitions)
    clock, policy = directory / "clock", directory / "sla.yaml"
    FileClock.write(clock, T0)
    policy.write_text(POLICY)
    settings = settings.model_copy(update={"clock": f"file:{clock}", "sla_policies": policy})
    registry = registry_client(settings.schema_registry_url)
    events = AvroSerde(
        registry, "contact_event", CONTACT_EVENTS.full_name(settings), discriminator="event_type"
    )
    with running_worker(settings, directory / "worker.log") as worker:
        time.sleep(2)  # the roster reaches the router first
        rss_before = rss_mb(worker.pid)
        out = producer(settings)
        for n in range(pending):
            key, record = lead(n, T0)
            out.produce(events.topic, key=key.encode(), value=events.encode(record))
        out.flush(30)
        deadline = time.monotonic() + 600
        while metric(settings.web_port, 'switchboard_timers_pending{kind="sla"}') < pending:
            if time.monotonic() > deadline:
                raise TimeoutError("the leads were not all assigned")
            time.sleep(0.5)
        rss_pending = rss_mb(worker.pid)
        FileClock.write(clock, T0 + timedelta(minutes=6))
        start = time.perf_counter()
        while metric(settings.web_port, "switchboard_timers_fired_total{") < pending:
            if time.perf_counter() - start > 600:
                raise TimeoutError("the timers did not all fire")
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    return {
        "pending": pending,
        "partitions": partitions,
        "fire_seconds": seconds,
        "fires_per_s": pending / seconds,
        "worker_rss_mb_idle": rss_before,
        "worker_rss_mb_pending": rss_pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--held", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=3000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("SLA timer benchmark")
    held = holds(args.held)
    print(
        f"  holds       {held['timers']:,} pending timers: table "
        f"{held['table_mb_per_million']:.0f} MB + schedule "
        f"{held['schedule_mb_per_million']:.0f} MB per million "
        f"({held['bytes_per_timer']:.0f} bytes a timer); rebuild "
        f"{held['rebuild_per_s']:,.0f} timers/s; schedule pops "
        f"{held['schedule_pops_per_s']:,.0f}/s"
    )
    rows = [fires(args.pending, args.partitions) for _ in range(args.rounds)]
    median = statistics.median(row["fires_per_s"] for row in rows)
    each = ", ".join(f"{row['fires_per_s']:.0f}" for row in rows)
    print(
        f"  fires       {args.pending:,} pending timers, 1 worker, {args.partitions} partitions: "
        f"median {median:,.0f} timers fired/s "
        f"({each}); worker RSS "
        f"{rows[0]['worker_rss_mb_idle']:.0f} MB idle, "
        f"{rows[0]['worker_rss_mb_pending']:.0f} MB with them pending"
    )
    results = {"holds": held, "fires": rows, "fires_per_s_median": median}
    print(f"  written to {write_results('timers', results)}")


if __name__ == "__main__":
    run_then_clean(main)
