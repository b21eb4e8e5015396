"""Benchmark of the stateful core on this machine: workers (identity, contact and
router stages, exactly-once) over the load generator's multi-system feed (with merges).

* sustained: a backlog of events drained as fast as 1 and 2 workers go (events/s), timed
  until every stage has done its part (the merges, routing and assignments the backlog
  causes included), and the same backlog through the floor (tests/bench/floor.py: a bare
  transactional read-decode-encode-write loop on the same broker, in the same run), with
  the ratio;
* latency: a steady feed, each decision's time in Kafka minus its event's time in
  Kafka (p50/p95/p99), for contact creations, score changes and assignments.

    .venv/bin/python -m tests.bench.bench_core [--backlog 100000] [--workers 1 2] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from connectors.sources.loadgen import run_load
from streams.lag import GroupLag
from streams.registry import register_catalog
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import AUDIT, CONTACT_EVENTS, REP_ROSTER, ensure_topics
from tests.bench import floor, new_run, run_then_clean, write_results
from tests.conftest import free_port
from tests.kafka_helpers import (
    WORKER_INPUTS,
    producer,
    read_all,
    running_worker,
    worker_metric,
)

REPS: list[dict[str, Any]] = [
    {
        "rep_id": f"rep-{i}",
        "name": f"Rep {i}",
        "email": f"rep{i}@example.com",
        "teams": ["inbound", "emea", "enterprise", "healthcare"],
        "capacity": 100000,
        "work_start": "00:00",
        "work_end": "23:59",
        "work_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    for i in range(5)
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def contact_events(workers: list[Settings]) -> float:
    return sum(worker_metric(w, "switchboard_events_total{", stage="contact") for w in workers)


def routed(workers: list[Settings]) -> float:
    """Leads the workers' router decided on (assigned, held or unassigned)."""
    return sum(worker_metric(w, "switchboard_routing_decisions_total{", None) for w in workers)


def wait_drained(workers: list[Settings], total: int, timeout: float) -> tuple[float, float]:
    """(seconds, events) from now until the workers' contact stage has taken in ``total``
    distinct events: the events counted are those still to take in now."""
    start = time.perf_counter()
    already = contact_events(workers)
    deadline = start + timeout
    while contact_events(workers) < total:
        if time.perf_counter() > deadline:
            raise TimeoutError("the workers did not drain the backlog")
        # Not faster: each scrape renders every series, which would slow the worker.
        time.sleep(0.5)
    return time.perf_counter() - start, total - already


def wait_done(settings: Settings, timeout: float, still_s: float = 2.0) -> float:
    """When (time.time()) the workers' group last moved on any of its inputs, once nothing
    has moved for ``still_s``: by then every stage has done its part of what it was given.
    (Lag alone does not reach 0: offsets count transaction markers.)"""
    lag = GroupLag(settings, settings.app_id, [t.full_name(settings) for t in WORKER_INPUTS])
    deadline = time.time() + timeout
    last, moved = lag.measure(), time.time()
    while time.time() - moved < still_s:
        if time.time() > deadline:
            raise TimeoutError("the workers did not settle")
        time.sleep(0.25)
        now = lag.measure()
        if now != last:
            last, moved = now, time.time()
    return moved


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used: on a shared machine, steadier than its
    wall-clock throughput."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh(run: str, partitions: int) -> Settings:
    (Path(".run/bench") / run).mkdir(parents=True, exist_ok=True)
    settings = Settings(
        topic_prefix=f"bench-{run}.",
        app_id=f"switchboard-bench-{run}",
        web_port=free_port(),
        partitions=partitions,
        data_dir=Path(".run/bench") / run / "worker",
    )
    ensure_topics(settings)
    registry = registry_client(settings.schema_registry_url)
    register_catalog(registry, settings)
    roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(settings))
    out = producer(settings)
    for rep in REPS:
        out.produce(roster.topic, key=rep["rep_id"].encode(), value=roster.encode(rep))
    out.flush(10)
    return settings


def sustained(backlog: int, partitions: int, workers: int) -> dict[str, Any]:
    run = new_run()
    settings = fresh(run, partitions)
    asyncio.run(run_load(settings, rate=0, count=backlog, seed=3, target="kafka"))
    events = len(read_all(settings, CONTACT_EVENTS.full_name(settings)))
    each = [
        settings.model_copy(
            update={"web_port": free_port(), "data_dir": Path(".run/bench") / run / f"w{n}"}
        )
        for n in range(workers)
    ]
    with ExitStack() as stack:
        pids = [
            stack.enter_context(running_worker(w, Path(".run/bench") / run / f"w{n}.log")).pid
            for n, w in enumerate(each)
        ]
        # Timed once every worker is ready: what is left of the backlog, until the contact
        # stage took in its last event and until every stage was done with what it caused.
        started = time.time()
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        intake_seconds, timed = wait_drained(each, events, timeout=900)
        # A lead of the backlog should be routed while the backlog drains, not after it.
        routed_in_drain = routed(each)
        seconds = wait_done(settings, timeout=900) - started
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        routed_in_all = routed(each)
    floor_seconds = floor.drain(settings, CONTACT_EVENTS.full_name(settings), events)
    return {
        "events": events,
        "timed_events": timed,
        "seconds": seconds,
        "events_per_s": timed / seconds,
        "intake_seconds": intake_seconds,
        "intake_events_per_s": timed / intake_seconds,
        "floor_events_per_s": events / floor_seconds,
        "core_to_floor": (timed / seconds) / (events / floor_seconds),
        "worker_cpu_s_per_100k": cpu / timed * 100_000,
        "routed_during_drain": routed_in_drain,
        "routed": routed_in_all,
        "partitions": partitions,
        "workers": workers,
    }


def latency(rate: float, seconds: float, partitions: int) -> dict[str, Any]:
    run = new_run()
    settings = fresh(run, partitions)
    registry = registry_client(settings.schema_registry_url)
    events = AvroSerde(
        registry, "contact_event", CONTACT_EVENTS.full_name(settings), discriminator="event_type"
    )
    audit = AvroSerde(registry, "audit_entry", AUDIT.full_name(settings))
    with running_worker(settings, Path(".run/bench") / run / "worker.log"):
        time.sleep(2)
        asyncio.run(run_load(settings, rate=rate, duration=seconds, seed=4, target="kafka"))
        sent = read_all(settings, events.topic)
        wait_drained([settings], len(sent), timeout=120)
        time.sleep(2)
        entered = {events.decode(m.value())["event_id"]: m.timestamp()[1] for m in sent}
        decided: dict[str, list[float]] = {}
        for message in read_all(settings, audit.topic):
            entry = audit.decode(message.value())
            for cause in entry["causation_event_ids"]:
                if cause in entered:
                    decided.setdefault(entry["decision"], []).append(
                        (message.timestamp()[1] - entered[cause]) / 1000
                    )
    everything = [v for values in decided.values() for v in values]
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "events": len(entered),
        "partitions": partitions,
        "decisions": {k: len(v) for k, v in decided.items()},
        "p50_s": percentile(everything, 0.50),
        "p95_s": percentile(everything, 0.95),
        "p99_s": percentile(everything, 0.99),
        "median_by_decision_s": {k: statistics.median(v) for k, v in decided.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, nargs="+", default=[6])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results: dict[str, Any] = {"sustained": [], "latency": []}
    print("stateful core benchmark: identity + contact + router, 1 worker, exactly-once")
    for partitions in args.partitions:
        for workers in args.workers:
            row = sustained(args.backlog, partitions, workers)
            results["sustained"].append(row)
            print(
                f"  sustained   {partitions} partitions, {workers} worker(s): "
                f"{row['events_per_s']:7,.0f} events/s ({row['timed_events']:.0f} of "
                f"{row['events']} events, every stage done in {row['seconds']:.1f}s; the "
                f"contact stage took in the last after {row['intake_seconds']:.1f}s: "
                f"{row['intake_events_per_s']:,.0f}/s); floor "
                f"{row['floor_events_per_s']:,.0f} events/s; core/floor "
                f"{row['core_to_floor']:.3f}; workers' CPU "
                f"{row['worker_cpu_s_per_100k']:.1f} s per 100k events; leads routed "
                f"while the contact stage took in the backlog {row['routed_during_drain']:,.0f}"
                f" of {row['routed']:,.0f}"
            )
    for partitions in args.partitions:
        row = latency(args.rate, args.seconds, partitions)
        results["latency"].append(row)
        print(
            f"  latency     {partitions} partitions at {args.rate:g}/s: event in Kafka to "
            f"decision in Kafka p50 {row['p50_s'] * 1000:.0f} ms, p95 "
            f"{row['p95_s'] * 1000:.0f} ms, p99 {row['p99_s'] * 1000:.0f} ms "
            f"over {sum(row['decisions'].values())} decisions"
        )
    print(f"  written to {write_results('core', results)}")


if __name__ == "__main__":
    run_then_clean(main)
