"""The caller lookup on this machine: a worker and a lookup on the real broker, contacts
from the load generator's multi-system feed, and while a steady feed goes on:

* latency of GET /v1/contacts/lookup at a steady rate (open loop: each request timed
  from when it was due, so a slow answer delays the next one's figure too), p50/p95/p99,
  against the floor: the same server answering a request it refuses before the view
  (a bad parameter), in the same run;
* freshness: a new person's event written to Kafka, until the lookup finds them (both
  worker stages and their checkpoints, then the changelog read), p50/p99.

    .venv/bin/python -m tests.bench.bench_lookup [--rate 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from connectors.sources.identity import strongest_key
from connectors.sources.loadgen import run_load
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh, percentile, wait_drained
from tests.conftest import free_port
from tests.kafka_helpers import (
    LOOKUP_TOKEN,
    producer,
    read_all,
    running_lookup,
    running_worker,
)

BENCH = Path(".run/bench")
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def ask(port: int, query: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "GET",
            f"/v1/contacts/lookup?{query}",
            headers={"Authorization": f"Bearer {LOOKUP_TOKEN}"},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def paced(port: int, queries: list[str], rate: float, seconds: float) -> tuple[list[float], int]:
    """Latencies (s) of ``queries`` sent in turn at ``rate``/s, each from when it was due,
    and how many answered other than 200 or 404."""
    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    start = time.perf_counter()

    def one(due: float, query: str) -> None:
        nonlocal failed
        status = ask(port, query)
        with lock:
            latencies.append(time.perf_counter() - due)
            failed += status not in (200, 404, 400)

    with ThreadPoolExecutor(max_workers=32) as pool:
        for n in range(int(rate * seconds)):
            due = start + n / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(one, due, queries[n % len(queries)])
    return latencies, failed


def probe_event(n: int, phone: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "event_id": f"bench-probe:{uuid.uuid4().hex}",
        "event_type": "FORM_SUBMITTED",
        "source_system": "forms",
        "event_time": now,
        "received_time": now,
        "identity": {"email": None, "phone": phone, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "profile": {},
        "payload": {
            "form_id": "bench",
            "form_name": None,
            "page_url": None,
            "fields": {"note": f"probe {n}"},
            "utm": {},
        },
    }


def freshness(settings: Settings, serde: AvroSerde, out: Producer, probes: int) -> list[float]:
    """Seconds from each new person's event acknowledged by Kafka to the lookup finding
    them."""
    found: list[float] = []
    for n in range(probes):
        phone = f"+1415{n:03d}{uuid.uuid4().int % 10_000:04d}"
        event = probe_event(n, phone)
        out.produce(serde.topic, key=strongest_key(event["identity"]), value=serde.encode(event))
        out.flush(10)
        written = time.perf_counter()
        deadline = written + 30
        while ask(settings.lookup_port, f"phone=%2B{phone[1:]}") != 200:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"probe {phone} never appeared in the lookup")
            time.sleep(0.005)
        found.append(time.perf_counter() - written)
        time.sleep(0.2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts-from", type=int, default=20_000, help="backlog events")
    parser.add_argument("--rate", type=float, default=200.0, help="lookups per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--feed", type=float, default=200.0, help="events/s meanwhile")
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()

    run = new_run()
    settings = fresh(run, 6).model_copy(update={"lookup_port": free_port()})
    registry = registry_client(settings.schema_registry_url)
    serde = AvroSerde(
        registry, "contact_event", CONTACT_EVENTS.full_name(settings), discriminator="event_type"
    )
    asyncio.run(run_load(settings, rate=0, count=args.contacts_from, seed=7, target="kafka"))
    people = sorted(
        {
            phone
            for message in read_all(settings, serde.topic)
            for phone in [serde.decode(message.value())["identity"]["phone"]]
            if phone
        }
    )
    queries = [f"phone=%2B{phone[1:]}" for phone in people]
    with ExitStack() as stack:
        stack.enter_context(running_worker(settings, BENCH / run / "worker.log"))
        events = len(read_all(settings, serde.topic))
        wait_drained([settings], events, timeout=600)
        stack.enter_context(running_lookup(settings, BENCH / run / "lookup.log"))

        feed = threading.Thread(
            target=lambda: asyncio.run(
                run_load(
                    settings,
                    rate=args.feed,
                    duration=args.seconds * 2 + args.probes * 0.5,
                    seed=8,
                    target="kafka",
                )
            ),
            daemon=True,
        )
        feed.start()
        floor, _ = paced(settings.lookup_port, ["phone=bad"], args.rate, args.seconds)
        lookups, failed = paced(settings.lookup_port, queries, args.rate, args.seconds)
        fresh_s = freshness(settings, serde, producer(settings), args.probes)
        feed.join()

    lookup = {q: percentile(lookups, p) * 1000 for q, p in QUANTILES}
    floor_ms = {q: percentile(floor, p) * 1000 for q, p in QUANTILES}
    row = {
        "contacts": len(people),
        "rate_per_s": args.rate,
        "feed_events_per_s": args.feed,
        "lookups": len(lookups),
        "failed": failed,
        "lookup_ms": lookup,
        "floor_ms": floor_ms,
        "p99_to_floor": lookup["p99"] / floor_ms["p99"],
        "freshness_s": {q: percentile(fresh_s, p) for q, p in QUANTILES},
    }
    print(
        f"caller lookup: {len(people):,} people's numbers, {args.rate:g} lookups/s for "
        f"{args.seconds:g} s while {args.feed:g} events/s flow in"
    )
    print(
        f"  lookup  p50/p95/p99 ms  {lookup['p50']:6.2f} {lookup['p95']:6.2f} "
        f"{lookup['p99']:6.2f}   ({len(lookups)} answered, {failed} failed)"
    )
    print(
        f"  floor   p50/p95/p99 ms  {floor_ms['p50']:6.2f} {floor_ms['p95']:6.2f} "
        f"{floor_ms['p99']:6.2f}   (refused before the view)   p99 ratio "
        f"{row['p99_to_floor']:.2f}"
    )
    f = row["freshness_s"]
    print(
        f"  event in Kafka -> found by the lookup p50/p95/p99 s  {f['p50']:.3f} "
        f"{f['p95']:.3f} {f['p99']:.3f} ({args.probes} new people)"
    )
    print(f"  written to {write_results('lookup', row)}")


if __name__ == "__main__":
    run_then_clean(main)
