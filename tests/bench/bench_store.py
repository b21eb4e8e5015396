"""The SQL CRM store on the feed's own mix of commands: a worker turns the load
generator's multi-system feed (with its merges: about one command in ten) into CRM
commands, which are then applied to SQLite and to PostgreSQL (from `make infra-up`) in
the CRM sink's batches, in the order they were written. No Kafka on the timed path: this
is the store alone.

It prints commands/s, the store's CPU per command, and SQL statements per batch.
bench_sinks measures the sink around it, on a synthetic mix without merges.

    .venv/bin/python -m tests.bench.bench_store [--events 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from connectors.sinks.crm.sql import open_store
from connectors.sinks.database import create_sql_engine
from connectors.sources.loadgen import run_load
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CRM_COMMANDS
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh, wait_drained
from tests.kafka_helpers import read_all, running_worker

BENCH = Path(".run/bench")
POSTGRES = "postgresql+psycopg://switchboard@127.0.0.1:54329"


def feed_commands(events: int) -> list[dict[str, Any]]:
    """The CRM commands a worker writes for ``events`` of the feed, as a sink reads them
    (partitions interleaved in the order they were written)."""
    run = new_run()
    settings = fresh(run, 6)
    asyncio.run(run_load(settings, rate=0, count=events, seed=5, target="kafka"))
    serde = AvroSerde(
        registry_client(settings.schema_registry_url),
        CRM_COMMANDS.schema,
        CRM_COMMANDS.full_name(settings),
        discriminator=CRM_COMMANDS.discriminator,
    )
    with running_worker(settings, BENCH / run / "worker.log"):
        wait_drained([settings], events, 900)
        messages = settled(settings, serde.topic)
    messages.sort(key=lambda m: m.timestamp()[1])
    return [serde.decode(m.value()) for m in messages]


def settled(settings: Settings, topic: str) -> list[Any]:
    """The topic's records once two reads a second apart find as many."""
    before: list[Any] = []
    while True:
        found = read_all(settings, topic)
        if before and len(found) == len(before):
            return found
        before = found
        time.sleep(1)


def database(store: str, run: str) -> str:
    if store == "sqlite":
        return f"sqlite:///{BENCH / run / 'crm.db'}"
    admin = create_sql_engine(f"{POSTGRES}/switchboard")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "bench_{run}"'))
    admin.dispose()
    return f"{POSTGRES}/bench_{run}"


def apply(store_kind: str, commands: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    run = new_run()
    (BENCH / run).mkdir(parents=True, exist_ok=True)
    store = open_store(database(store_kind, run))
    statements = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def counted(*_: Any) -> None:
        statements[0] += 1

    rejected = 0
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(commands), batch):
        outcomes = store.deliver_sync(commands[start : start + batch])
        rejected += sum(outcome is not None for outcome in outcomes)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    batches = -(-len(commands) // batch)
    store.engine.dispose()
    return {
        "store": store_kind,
        "commands": len(commands),
        "merges": sum(c["command_type"] == "MERGE_CONTACTS" for c in commands),
        "commands_per_s": round(len(commands) / elapsed),
        "cpu_us_per_command": round(cpu / len(commands) * 1e6),
        "statements_per_batch": round(statements[0] / batches, 1),
        "rejected": rejected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    args = parser.parse_args()
    commands = feed_commands(args.events)
    print(
        f"SQL CRM store: the feed's commands for {args.events:,} events, in batches of {args.batch}"
    )
    rows = []
    for store in args.stores:
        row = apply(store, commands, args.batch)
        rows.append(row)
        print(
            f"  {store:10} {row['commands']:,} commands ({row['merges']:,} merges): "
            f"{row['commands_per_s']:,}/s, {row['cpu_us_per_command']} us CPU a command, "
            f"{row['statements_per_batch']:g} statements a batch, {row['rejected']} rejected",
            flush=True,
        )
    print(f"  written to {write_results('store', {'runs': rows})}")


if __name__ == "__main__":
    run_then_clean(main)
