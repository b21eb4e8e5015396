"""End-to-end benchmark on this machine: events into Kafka → workers (identity, contact,
routing, SLA clocks, workflows; exactly-once) → the CRM sink → rows in the SQL CRM store
(SQLite, and PostgreSQL from `make infra-up`), at 1 and 2 workers.

* throughput: a backlog already in Kafka, from the moment every worker is ready until
  the CRM store's last write for it, whatever the command (events/s, end to end), and the
  CPU the workers and the sink spent on it (seconds per 100k events);
* latency: a steady feed, each event's time from its event_time (the provider's stamp,
  some to the second only) and from its arrival, to its first CRM write (p50/p95/p99),
  against the seeds' promise of under two seconds; and, for each call with a next step
  (the voice AI's end-of-call reports), from its arrival to its whole record in the CRM:
  the contact's fields, the call's activity and the next-step task all applied (later
  consequences of the call, a workflow's steps, are not the record);
* peak memory (VmHWM) of each worker and of the sink.

    .venv/bin/python -m tests.bench.bench_e2e [--workers 1 2] [--stores sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from subprocess import Popen
from typing import Any

from sqlalchemy import func, select, text

from connectors.sinks.crm.sql import APPLIED_COMMANDS
from connectors.sinks.database import create_sql_engine
from connectors.sources.loadgen import run_load
from streams.lag import GroupLag
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, CRM_COMMANDS
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import contact_events, cpu_seconds, fresh, percentile
from tests.conftest import free_port
from tests.kafka_helpers import WORKER_INPUTS, read_all, running_sink, running_worker

BENCH = Path(".run/bench")


# The commands that make a call's record whole in the CRM.
RECORD = ("UPSERT_CONTACT", "LOG_ACTIVITY", "CREATE_TASK")


def applied(settings: Settings) -> tuple[int, datetime | None]:
    """How many commands the CRM store has applied, and when it applied the last: cheap
    enough to ask every second while the pipeline runs on the same CPUs (reading every
    write is not)."""
    engine = create_sql_engine(settings.crm_database_url)
    query = select(func.count(), func.max(APPLIED_COMMANDS.c.applied_at))
    with engine.connect() as connection:
        count, last = connection.execute(query).one()
    engine.dispose()
    return count, last


def crm_writes(settings: Settings) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Each causing event's first CRM write, and the time its record was whole: the
    latest of the first write of each of RECORD's command types it caused."""
    engine = create_sql_engine(settings.crm_database_url)
    rows = select(
        APPLIED_COMMANDS.c.causation_event_id,
        APPLIED_COMMANDS.c.command_type,
        APPLIED_COMMANDS.c.applied_at,
    )
    first: dict[str, datetime] = {}
    by_type: dict[tuple[str, str], datetime] = {}
    with engine.connect() as connection:
        for cause, kind, at in connection.execute(rows):
            if cause and (cause not in first or at < first[cause]):
                first[cause] = at
            if (
                cause
                and kind in RECORD
                and ((cause, kind) not in by_type or at < by_type[cause, kind])
            ):
                by_type[cause, kind] = at
    engine.dispose()
    whole: dict[str, datetime] = {}
    for (cause, _), at in by_type.items():
        whole[cause] = max(at, whole.get(cause, at))
    return first, whole


def settled(settings: Settings, timeout: float) -> None:
    """Wait until nothing moves: the workers' and the CRM sink's lag and the CRM store's
    writes the same for 3 s. (Lag alone does not reach 0: offsets count transaction
    markers, a few per partition.)"""
    inputs = [t.full_name(settings) for t in WORKER_INPUTS]
    workers = GroupLag(settings, settings.app_id, inputs)
    sink = GroupLag(settings, f"{settings.app_id}-sink-crm", [CRM_COMMANDS.full_name(settings)])
    deadline = time.monotonic() + timeout
    seen: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        seen.append((workers.measure(), sink.measure(), applied(settings)))
        # Not before the first write: on a busy machine a worker's first transaction
        # can take longer than the 3 s that otherwise mean "settled".
        if len(seen) >= 4 and seen[-1] == seen[-2] == seen[-3] == seen[-4] and seen[-1][2][0]:
            return
        time.sleep(1)
    raise TimeoutError("the pipeline did not settle")


def fresh_postgres(run: str) -> str:
    """A database of its own on the PostgreSQL `make infra-up` runs (infra/postgres)."""
    server = "postgresql+psycopg://switchboard@127.0.0.1:54329"
    admin = create_sql_engine(f"{server}/switchboard")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "bench_{run}"'))
    admin.dispose()
    return f"{server}/bench_{run}"


def peak_rss_mb(process: Popen[bytes]) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(
    workers: int, partitions: int, backlog: int, rate: float, seconds: float, postgres: bool
) -> dict[str, Any]:
    run = new_run()
    database = fresh_postgres(run) if postgres else f"sqlite:///{BENCH / run / 'crm.db'}"
    settings = fresh(run, partitions).model_copy(
        update={"crm_database_url": database, "metrics_port": free_port()}
    )
    serde = AvroSerde(
        registry_client(settings.schema_registry_url),
        "contact_event",
        CONTACT_EVENTS.full_name(settings),
        discriminator="event_type",
    )
    # The backlog is in Kafka before anything reads it: what is timed is the pipeline
    # (workers, sink, store), not the load generator publishing on the same CPUs.
    asyncio.run(run_load(settings, rate=0, count=backlog, seed=5, target="kafka"))
    events = len(read_all(settings, serde.topic))
    with ExitStack() as stack:
        sink = stack.enter_context(running_sink(settings, "crm", BENCH / run / "sink.log"))
        each = [
            settings.model_copy(
                update={"web_port": free_port(), "data_dir": BENCH / run / f"worker-{n}"}
            )
            for n in range(workers)
        ]
        processes = [
            stack.enter_context(running_worker(w, BENCH / run / f"worker-{n}.log"))
            for n, w in enumerate(each)
        ]
        # Timed once every worker is ready: what is left of the backlog (with 2 workers,
        # the first takes much of it before the second is ready: the row says how much).
        started = datetime.now().astimezone()
        already = contact_events(each)
        pids = [p.pid for p in (*processes, sink)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        settled(settings, timeout=900)
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        # Until the store's last write: the merges, owners and tasks the backlog causes
        # come after the first write of each event.
        _, last = applied(settings)
        assert last is not None
        drained = (last - started).total_seconds()
        timed = events - already

        steady_from = time.time() * 1000
        asyncio.run(run_load(settings, rate=rate, duration=seconds, seed=6, target="kafka"))
        settled(settings, timeout=300)
        writes, last_writes = crm_writes(settings)
        from_event, from_arrival, call_to_record = [], [], []
        for message in read_all(settings, serde.topic):
            if message.timestamp()[1] < steady_from:
                continue
            event = serde.decode(message.value())
            written = writes.get(event["event_id"])
            if written is not None:
                from_event.append((written - event["event_time"]).total_seconds())
                from_arrival.append((written - event["received_time"]).total_seconds())
            payload = event["payload"]
            if event["event_type"] == "CALL_COMPLETED" and payload.get("next_step"):
                whole = last_writes[event["event_id"]] - event["received_time"]
                call_to_record.append(whole.total_seconds())
        memory = {
            "workers_mb": [round(peak_rss_mb(p), 1) for p in processes],
            "sink_mb": round(peak_rss_mb(sink), 1),
        }
    return {
        "store": "PostgreSQL" if postgres else "SQLite",
        "workers": workers,
        "partitions": partitions,
        "backlog": backlog,
        "throughput_events_per_s": timed / drained,
        "drain_seconds": drained,
        "timed_events": timed,
        "cpu_s_per_100k": {
            "workers": sum(cpu[:-1]) / timed * 100_000,
            "sink": cpu[-1] / timed * 100_000,
        },
        "rate_per_s": rate,
        "events_written": len(from_event),
        "from_event_time_s": {q: percentile(from_event, p) for q, p in QUANTILES},
        "from_arrival_s": {q: percentile(from_arrival, p) for q, p in QUANTILES},
        "under_2s_share": sum(v < 2 for v in from_event) / len(from_event) if from_event else 0,
        "calls_with_next_step": len(call_to_record),
        "call_to_whole_record_s": {q: percentile(call_to_record, p) for q, p in QUANTILES},
        "peak_memory": memory,
    }


QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, nargs="+", default=[6])
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(
        "end to end: Kafka in -> workers -> CRM sink -> SQL CRM store "
        f"({args.backlog} backlog; latency at {args.rate:g} events/s)"
    )
    print(
        "  store      workers partitions   events/s (timed)   event->CRM p50/p95/p99 s"
        "   arrival->CRM p50/p95/p99 s   <2s   peak MB worker/sink"
        "   call->whole record p50/p95/p99 s   CPU s/100k worker(s)/sink"
    )
    rows = []
    for store, partitions, workers in (
        (s, p, w) for s in args.stores for p in args.partitions for w in args.workers
    ):
        postgres = store == "postgresql"
        row = one(workers, partitions, args.backlog, args.rate, args.seconds, postgres)
        rows.append(row)
        e, a, m = row["from_event_time_s"], row["from_arrival_s"], row["peak_memory"]
        c, cpu = row["call_to_whole_record_s"], row["cpu_s_per_100k"]
        print(
            f"  {row['store']:10} {workers:7} {partitions:10}"
            f" {row['throughput_events_per_s']:10,.0f} ({row['timed_events']:6.0f})"
            f"   {e['p50']:6.2f} {e['p95']:6.2f} {e['p99']:6.2f}"
            f"        {a['p50']:6.2f} {a['p95']:6.2f} {a['p99']:6.2f}"
            f"        {row['under_2s_share']:4.0%}"
            f"   {max(m['workers_mb']):.0f}/{m['sink_mb']:.0f}"
            f"        {c['p50']:6.2f} {c['p95']:6.2f} {c['p99']:6.2f}"
            f"        {cpu['workers']:.1f}/{cpu['sink']:.1f}",
            flush=True,
        )
    print(f"  written to {write_results('e2e', {'runs': rows})}")


if __name__ == "__main__":
    run_then_clean(main)
