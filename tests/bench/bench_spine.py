"""Benchmarks of the streaming spine on this machine: Avro encode/decode, producing to
the real broker (idempotent, acks=all) and the identity stage's throughput (the contact
stage behind it) in
a real worker. Prints medians and writes bench-results/spine-<time>.json.

    make bench            (or: .venv/bin/python -m tests.bench.bench_spine --events 20000)
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

import schemas
from processors.records.base import audit_entry
from streams.registry import register_catalog
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import AUDIT, CONTACT_EVENTS, CRM_COMMANDS, ensure_topics
from tests.bench import new_run, run_then_clean, write_results
from tests.conftest import free_port
from tests.kafka_helpers import producer, running_worker, worker_metric
from tests.records import contact_event, crm_command


def events(count: int) -> list[dict[str, Any]]:
    start = datetime.now(UTC)
    return [
        contact_event(
            event_id=f"bench:{i}",
            event_time=start + timedelta(milliseconds=i),
            received_time=start + timedelta(milliseconds=i),
            identity={
                "email": f"person{i % 5000}@example.com",
                "phone": None,
                "crm_id": None,
                "external_ids": {},
            },
        )
        for i in range(count)
    ]


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def worker_records(count: int) -> dict[str, list[dict[str, Any]]]:
    """Records of the kinds a worker writes most per event, shaped as it writes them."""
    start = datetime.now(UTC)
    commands, audits = [], []
    for i in range(count):
        contact = f"c-{i:020x}"
        at = start + timedelta(milliseconds=i)  # one event's time each, as in a worker
        commands.append(
            crm_command(
                "UPSERT_CONTACT",
                contact,
                {
                    "email": f"person{i}@example.com",
                    "phone": None,
                    "crm_id": None,
                    "first_name": "Ana",
                    "last_name": None,
                    "company": None,
                    "title": None,
                    "properties": {"lead_score": str(i % 100), "service": "leak repair"},
                },
                command_id=f"{i:032x}",
                issued_at=at,
            )
        )
        audits.append(
            audit_entry(
                contact,
                "scoring",
                "score_changed",
                f"score {i % 100} (+15: form submitted)",
                {"score": i % 100, "band": "warm", "previous": 20, "rule": "form"},
                [f"typeform:tf-{i}"],
                at,
            )
        )
    return {"crm_command": commands, "audit_entry": audits}


def bench_serde(serde: AvroSerde, records: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """Encode and decode rates through the serde, and through fastavro alone (what the
    compiled writers and readers are measured against, streams.avro_writer and
    streams.avro_reader)."""
    encode_rates, decode_rates, fastavro_rates, fastavro_reads = [], [], [], []
    encoded: list[bytes] = []
    prepared = [serde.validate(r) for r in records]
    parsed = schemas.parsed(serde.schema_name)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for r in prepared:
            body = io.BytesIO()
            schemaless_writer(body, parsed, r)
            body.getvalue()
        fastavro_rates.append(rate(len(records), time.perf_counter() - t0))
        t0 = time.perf_counter()
        encoded = [serde.encode(r) for r in records]
        encode_rates.append(rate(len(records), time.perf_counter() - t0))
        t0 = time.perf_counter()
        for data in encoded:
            schemaless_reader(io.BytesIO(data[5:]), parsed, None)
        fastavro_reads.append(rate(len(records), time.perf_counter() - t0))
        t0 = time.perf_counter()
        for data in encoded:
            serde.decode(data)
        decode_rates.append(rate(len(records), time.perf_counter() - t0))
    return {
        "encode_per_s_median": statistics.median(encode_rates),
        "fastavro_encode_per_s_median": statistics.median(fastavro_rates),
        "decode_per_s_median": statistics.median(decode_rates),
        "fastavro_decode_per_s_median": statistics.median(fastavro_reads),
        "bytes_per_event": statistics.mean(len(e) for e in encoded),
    }


def bench_produce(settings: Settings, topic: str, payloads: list[bytes], rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        out = producer(settings)
        t0 = time.perf_counter()
        for i, value in enumerate(payloads):
            while True:
                try:
                    out.produce(topic, key=f"email:person{i % 5000}".encode(), value=value)
                    break
                except BufferError:
                    out.poll(0.05)
        out.flush(60)
        rates.append(rate(len(payloads), time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    run_id = new_run()
    work = Path(".run/bench") / run_id
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        topic_prefix=f"bench-{run_id}.",
        app_id=f"switchboard-bench-{run_id}",
        web_port=free_port(),
        data_dir=work / "worker",
    )
    ensure_topics(settings)
    registry = registry_client(settings.schema_registry_url)
    register_catalog(registry, settings)
    topic = CONTACT_EVENTS.full_name(settings)
    serde = AvroSerde(registry, "contact_event", topic, discriminator="event_type")
    records = events(args.events)

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": args.events,
        "partitions": settings.partitions,
        "serde": bench_serde(serde, records, args.rounds),
    }
    written = worker_records(args.events)
    results["serde_crm_command"] = bench_serde(
        AvroSerde(
            registry, "crm_command", CRM_COMMANDS.full_name(settings), discriminator="command_type"
        ),
        written["crm_command"],
        args.rounds,
    )
    results["serde_audit_entry"] = bench_serde(
        AvroSerde(registry, "audit_entry", AUDIT.full_name(settings)),
        written["audit_entry"],
        args.rounds,
    )
    payloads = [serde.encode(r) for r in records]
    results["produce_per_s_median"] = bench_produce(settings, topic, payloads, args.rounds)

    # The topic now holds rounds x events; one worker drains them through the stateful stages.
    total = args.events * args.rounds
    t0 = time.perf_counter()
    with running_worker(settings, work / "worker.log"):
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        while worker_metric(settings, "switchboard_events_total{") < total:
            time.sleep(0.1)
        results["worker"] = {
            "events": total,
            "events_per_s": rate(total, time.perf_counter() - t1),
            "startup_to_ready_s": ready,
            "processing_guarantee": settings.processing_guarantee,
            "workers": 1,
        }
    results["bench_process_peak_rss_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )

    print(
        f"spine benchmark, {args.events} events x {args.rounds} rounds, "
        f"{settings.partitions} partitions (medians)"
    )
    for key, what in (
        ("serde", "contact_event"),
        ("serde_crm_command", "crm_command"),
        ("serde_audit_entry", "audit_entry"),
    ):
        figures = results[key]
        for way in ("encode", "decode"):
            ours, alone = figures[f"{way}_per_s_median"], figures[f"fastavro_{way}_per_s_median"]
            print(
                f"  avro {what:<14} {way} {ours:>9,.0f}/s "
                f"(fastavro alone {alone:>9,.0f}/s: {ours / alone:.2f}x)"
            )
    print(f"  event size       {results['serde']['bytes_per_event']:>10,.0f} bytes")
    print(f"  produce (acks=all, idempotent) {results['produce_per_s_median']:>10,.0f} events/s")
    worker = results["worker"]
    print(
        f"  identity stage, 1 worker, {worker['processing_guarantee']}: "
        f"{worker['events_per_s']:,.0f} events/s over {worker['events']:,} events "
        f"(ready after {worker['startup_to_ready_s']:.1f}s)"
    )
    print(f"  bench process peak RSS {results['bench_process_peak_rss_mib']:.0f} MiB")

    print(f"  written to {write_results('spine', results)}")


if __name__ == "__main__":
    run_then_clean(main)
