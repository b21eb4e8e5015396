"""Benchmark of the workflow engine on this machine.

* holds: what one worker keeps per active run, measured with tracemalloc over ``--held``
  contacts, each waiting in the packaged new-web-lead workflow (its run, its history and
  its recent sends): the workflow-runs table's values as the memory store keeps them, and
  the in-memory schedule of waits; reported per 100,000 runs.
* engine: the pure engine alone, advancing runs through new-web-lead (enrol, branch,
  send, wait; then the timeout, follow-up, wait); engine calls per second.
* advances: a real worker holding ``--waiting`` runs (leads that entered a drip workflow
  and wait an hour), then the file clock moves past the hour; runs advanced per second
  until every one has exited (due notice through Kafka, the step, its e-mail, its
  exit, the CRM tag and the audit entries, exactly-once).

    .venv/bin/python -m tests.bench.bench_workflows [--held 100000] [--waiting 3000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from processors.pipeline import load_rules as load_pipeline
from processors.state import ContactState
from processors.timers import Schedule
from processors.workflows.engine import Engine
from processors.workflows.library import load_library
from processors.workflows.runbook import RunBook
from processors.workflows.runs import stored_waits
from streams.clock import FileClock
from streams.serde import AvroSerde, registry_client
from streams.topics import CONTACT_EVENTS
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh
from tests.bench.bench_timers import T0, metric, rss_mb
from tests.integration.test_sla_timers import lead
from tests.integration.test_workflows import DRIP, POLICIES
from tests.kafka_helpers import producer, running_worker

LIBRARY = load_library()
ENGINE = Engine(LIBRARY, load_pipeline())


def contact(n: int) -> ContactState:
    return ContactState(
        contact_id=uuid.UUID(int=n).hex,  # contact ids are uuid hex, as minted
        identifiers=[f"email:lead{n}@example.com"],
        profile={"first_name": f"Lead{n}", "company": "Acme"},
        owner_id="rep-1",
    )


def entered(n: int) -> tuple[RunBook, ContactState]:
    """Contact ``n`` after its form: in new-web-lead, waiting for a reply."""
    _, event = lead(n, T0)
    state = contact(n)
    outcome = ENGINE.on_event(RunBook(partition=n % 6), state, event, T0)
    return outcome.book, outcome.state


def holds(count: int) -> dict[str, Any]:
    owned = set(range(6))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    values = {}
    for n in range(count):
        book, state = entered(n)
        values[state.contact_id] = book.model_dump_json(exclude_defaults=True)
    table_bytes = tracemalloc.get_traced_memory()[0] - base
    schedule = Schedule()
    schedule.rebuild(stored_waits(values.items(), owned))
    schedule_bytes = tracemalloc.get_traced_memory()[0] - base - table_bytes
    tracemalloc.stop()
    assert len(schedule) == count
    per = 100_000 / count
    return {
        "runs": count,
        "table_mb_per_100k": table_bytes * per / 2**20,
        "schedule_mb_per_100k": schedule_bytes * per / 2**20,
        "bytes_per_run": (table_bytes + schedule_bytes) / count,
    }


def engine(count: int) -> dict[str, Any]:
    """Engine calls per second: each contact enters (one call) and times out (another)."""
    books = []
    start = time.perf_counter()
    for n in range(count):
        books.append(entered(n))
    enter_s = time.perf_counter() - start
    start = time.perf_counter()
    for book, state in books:
        run = book.runs["new-web-lead"]
        assert run.waiting_until is not None
        ENGINE.on_due(book, state, run.workflow, run.waiting_until, run.seq, run.waiting_until)
    due_s = time.perf_counter() - start
    return {
        "runs": count,
        "enrolments_per_s": count / enter_s,
        "wait_ends_per_s": count / due_s,
    }


def advances(waiting: int, partitions: int) -> dict[str, Any]:
    run = new_run()
    directory = Path(".run/bench") / run
    settings = fresh(run, partitions)
    clock, workflows = directory / "clock", directory / "workflows"
    FileClock.write(clock, T0)
    workflows.mkdir()
    (workflows / "policies.yaml").write_text(POLICIES)
    (workflows / "drip.yaml").write_text(DRIP)
    settings = settings.model_copy(update={"clock": f"file:{clock}", "workflows": workflows})
    registry = registry_client(settings.schema_registry_url)
    events = AvroSerde(
        registry, "contact_event", CONTACT_EVENTS.full_name(settings), discriminator="event_type"
    )
    waits = 'switchboard_timers_pending{kind="workflow"}'
    with running_worker(settings, directory / "worker.log") as worker:
        rss_before = rss_mb(worker.pid)
        out = producer(settings)
        for n in range(waiting):
            key, record = lead(n, T0)
            out.produce(events.topic, key=key.encode(), value=events.encode(record))
        out.flush(30)
        deadline = time.monotonic() + 600
        while metric(settings.web_port, waits) < waiting:
            if time.monotonic() > deadline:
                raise TimeoutError("the leads did not all enter the workflow")
            time.sleep(0.5)
        rss_waiting = rss_mb(worker.pid)
        FileClock.write(clock, T0 + timedelta(hours=2))
        start = time.perf_counter()
        while metric(settings.web_port, "switchboard_workflow_exits_total{") < waiting:
            if time.perf_counter() - start > 600:
                raise TimeoutError("the runs did not all advance")
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    return {
        "waiting": waiting,
        "partitions": partitions,
        "advance_seconds": seconds,
        "advances_per_s": waiting / seconds,
        "worker_rss_mb_idle": rss_before,
        "worker_rss_mb_waiting": rss_waiting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--held", type=int, default=100_000)
    parser.add_argument("--engine-runs", type=int, default=20_000)
    parser.add_argument("--waiting", type=int, default=3000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("Workflow benchmark")
    held = holds(args.held)
    print(
        f"  holds       {held['runs']:,} active runs: table {held['table_mb_per_100k']:.0f} MB"
        f" + schedule {held['schedule_mb_per_100k']:.0f} MB per 100k runs "
        f"({held['bytes_per_run']:.0f} bytes a run)"
    )
    pure = engine(args.engine_runs)
    print(
        f"  engine      {pure['runs']:,} runs through new-web-lead, pure: "
        f"{pure['enrolments_per_s']:,.0f} enrolments/s, "
        f"{pure['wait_ends_per_s']:,.0f} wait ends/s"
    )
    rows = [advances(args.waiting, args.partitions) for _ in range(args.rounds)]
    median = statistics.median(row["advances_per_s"] for row in rows)
    each = ", ".join(f"{row['advances_per_s']:.0f}" for row in rows)
    print(
        f"  advances    {args.waiting:,} waiting runs, 1 worker, {args.partitions} partitions: "
        f"median {median:,.0f} runs advanced/s ({each}); worker RSS "
        f"{rows[0]['worker_rss_mb_idle']:.0f} MB idle, "
        f"{rows[0]['worker_rss_mb_waiting']:.0f} MB with them waiting"
    )
    results = {"holds": held, "engine": pure, "advances": rows, "advances_per_s_median": median}
    print(f"  written to {write_results('workflows', results)}")


if __name__ == "__main__":
    run_then_clean(main)
