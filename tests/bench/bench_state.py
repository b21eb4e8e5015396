"""Benchmark of a worker's state at scale: one worker (6 partitions) holding ``--contacts``
contacts in RocksDB tables.

* first start, empty data_dir: the time until "Worker ready" (every changelog record
  restored), records restored per second, and the worker's peak (VmHWM) and steady
  (VmRSS while it idles) resident memory;
* restart on the same data_dir: the stores keep the changelog offset they reached, so
  the worker restores ~nothing; the same figures;
* the same with store=memory:// over ``--memory-contacts``, which keeps every value in
  the Python heap and restores the whole changelog at every start.

The ``contacts`` (contact id -> ContactState JSON) and ``identity`` (identifier -> contact
id) changelogs are filled directly by a producer, each record on the partition the
worker itself would have written it to; that fill is setup, timed apart.

    .venv/bin/python -m tests.bench.bench_state [--contacts 1000000] [--memory-contacts 200000]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from processors.identity import minted_contact_id
from processors.state import ContactState, Deal
from processors.worker import build
from streams.engine import changelog_record, changelog_topic
from streams.kafka import partition_of, producer_config
from streams.settings import Settings
from streams.topics import ensure_internal_topics
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh
from tests.kafka_helpers import running_worker

T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
ASSIGNED = re.compile(
    rb"assigned partitions \[[^]]*\]: (\d+) keys held, (\d+) changelog records restored "
    rb"in ([\d.]+)s"
)


def contact(n: int, rng: random.Random) -> ContactState:
    """A contact of realistic size: 2 identifiers, 6 profile fields, a score and band,
    3 inbound touches, 20 recent event ids, one open deal."""
    email = f"person{n}@company{n % 5000}.example.com"
    seen = T0 - timedelta(days=n % 400)
    profile = {
        "first_name": f"First{n % 997}",
        "last_name": f"Last{n % 9973}",
        "company": f"Company {n % 5000} Ltd",
        "title": "Head of Operations",
        "country": "GB",
        "email_domain": email.rpartition("@")[2],
    }
    return ContactState(
        contact_id=minted_contact_id(f"email:{email}"),
        identifiers=[f"email:{email}", f"phone:+4477{n:08d}"],
        profile=profile,
        profile_origin=dict.fromkeys(profile, "self"),
        lifecycle_stage="marketingqualifiedlead",
        owner_id=f"rep-{n % 5}",
        routing="assigned",
        score=42.0,
        score_components={"form-submitted": 15.0, "meeting-booked": 25.0, "email-opened": 2.0},
        band="MQL",
        last_inbound={
            "web": seen + timedelta(hours=1),
            "email": seen + timedelta(hours=2),
            "phone": seen + timedelta(hours=3),
        },
        open_deals={
            f"deal-{n}": Deal(
                deal_id=f"deal-{n}",
                stage="qualifiedtobuy",
                updated_at=seen + timedelta(hours=4),
                amount_minor=250_000,
                currency="GBP",
            )
        },
        recent_event_ids=[f"evt-{rng.getrandbits(96):024x}" for _ in range(20)],
        first_seen=seen,
        last_event_time=seen + timedelta(hours=4),
    )


def fill(settings: Settings, count: int) -> dict[str, Any]:
    """``count`` contacts into the contacts changelog, their identifiers into identity's."""
    # A store-less twin names the changelogs: a rocksdb:// engine would lock slot-0 here.
    engine, _ = build(settings.model_copy(update={"store": "memory://"}))
    ensure_internal_topics(settings, engine.internal_topics())
    contacts, identity = (changelog_topic(settings, t) for t in ("contacts", "identity"))
    out = Producer(
        producer_config(
            settings,
            **{"linger.ms": 50, "compression.type": "lz4", "queue.buffering.max.kbytes": 1 << 20},
        )
    )
    rng = random.Random(7)
    records = value_bytes = 0
    start = time.perf_counter()

    def send(topic: str, key: str, value: str) -> None:
        record_key, record_value = changelog_record(key, value)
        partition = partition_of(key.encode(), settings.partitions)
        while True:
            try:
                out.produce(topic, record_value, record_key, partition=partition)
                return
            except BufferError:
                out.poll(0.1)

    for n in range(count):
        state = contact(n, rng)
        value = state.model_dump_json()
        send(contacts, state.contact_id, value)
        for identifier in state.identifiers:
            send(identity, identifier, state.contact_id)
        records += 3
        value_bytes += len(value)
        if n % 10_000 == 0:
            out.poll(0)
    if out.flush(300):
        raise RuntimeError("the changelog fill did not finish")
    seconds = time.perf_counter() - start
    return {
        "contacts": count,
        "records": records,
        "contact_json_bytes_avg": value_bytes / max(count, 1),
        "seconds": seconds,
        "records_per_s": records / seconds,
    }


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


def start(settings: Settings, log_path: Path, idle_s: float) -> dict[str, Any]:
    """Start a worker, time it to "Worker ready", then watch its memory while it idles."""
    began = time.perf_counter()
    with running_worker(settings, log_path, ready_timeout=1800) as worker:
        ready_s = time.perf_counter() - began
        steady = []  # VmRSS while idle: what the worker keeps once ready
        deadline = time.monotonic() + idle_s
        while time.monotonic() < deadline:
            steady.append(memory_mb(worker.pid)["VmRSS"])
            time.sleep(0.5)
        peak = memory_mb(worker.pid)["VmHWM"]
    found = ASSIGNED.search(log_path.read_bytes())
    if found is None:
        raise RuntimeError(f"no assignment logged in {log_path}")
    held, restored, restore_s = int(found[1]), int(found[2]), float(found[3])
    return {
        "ready_s": ready_s,
        "restore_s": restore_s,
        "keys_held_before": held,
        "records_restored": restored,
        "restored_per_s": restored / restore_s if restored and restore_s else None,
        "peak_rss_mb": peak,
        "steady_rss_mb": max(steady),
    }


def disk_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20


def scenario(store: str, count: int, partitions: int, idle_s: float) -> dict[str, Any]:
    run = new_run()
    directory = Path(".run/bench") / run
    settings = fresh(run, partitions).model_copy(update={"store": store})
    filled = fill(settings, count)
    first = start(settings, directory / "worker-1.log", idle_s)
    again = start(settings, directory / "worker-2.log", idle_s)
    on_disk = disk_mb(settings.data_dir) if settings.data_dir.exists() else 0.0
    shutil.rmtree(settings.data_dir, ignore_errors=True)  # ~1 GB a million contacts
    return {
        "store": store,
        "contacts": count,
        "partitions": partitions,
        "fill": filled,
        "first_start": first,
        "restart": again,
        "data_dir_mb": on_disk,
    }


def report(row: dict[str, Any]) -> None:
    fill, first, again = row["fill"], row["first_start"], row["restart"]
    print(
        f"  {row['store']:<11} {row['contacts']:,} contacts: fill {fill['records']:,} "
        f"changelog records in {fill['seconds']:.0f}s (setup; contact JSON "
        f"{fill['contact_json_bytes_avg']:.0f} bytes)"
    )
    for name, start in (("first start", first), ("restart", again)):
        rate = start["restored_per_s"]
        print(
            f"    {name:<12} ready in {start['ready_s']:.1f}s: {start['records_restored']:,} "
            f"records restored in {start['restore_s']:.1f}s"
            + (f" ({rate:,.0f}/s)" if rate else "")
            + f"; peak RSS {start['peak_rss_mb']:,.0f} MB, steady "
            f"{start['steady_rss_mb']:,.0f} MB"
        )
    if row["data_dir_mb"]:
        print(f"    data_dir {row['data_dir_mb']:,.0f} MB on disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--memory-contacts", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of RSS sampling")
    args = parser.parse_args()
    print("state benchmark: 1 worker, contacts + identity changelogs")
    results: dict[str, Any] = {}
    for store, count in (("rocksdb://", args.contacts), ("memory://", args.memory_contacts)):
        if count:
            row = scenario(store, count, args.partitions, args.idle)
            results[store.removesuffix("://")] = row
            report(row)
    print(f"  written to {write_results('state', results)}")


if __name__ == "__main__":
    run_then_clean(main)
