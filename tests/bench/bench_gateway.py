"""Benchmark of the webhook gateway on this machine: one gateway process, signed
provider webhooks from the load generator over HTTP on loopback, each answered only
after Kafka (acks=all) has its events. Prints sustained rate and latency percentiles,
flat out and at a steady rate, and writes bench-results/gateway-<time>.json.

    .venv/bin/python -m tests.bench.bench_gateway [--count 6000] [--steady-rate 300]
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.sources.loadgen import LoadReport, run_load
from streams.registry import register_catalog
from streams.serde import registry_client
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.bench import new_run, run_then_clean, write_results
from tests.conftest import free_port
from tests.kafka_helpers import running_gateway
from tests.webhooks import SECRETS


def figures(report: LoadReport) -> dict[str, Any]:
    return {
        "webhooks": report.sent,
        "answers": dict(report.statuses),
        "per_s": report.sent / report.elapsed_s,
        "p50_ms": report.percentile(0.50) * 1000,
        "p95_ms": report.percentile(0.95) * 1000,
        "p99_ms": report.percentile(0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steady-rate", type=float, default=300.0)
    parser.add_argument("--steady-seconds", type=float, default=15.0)
    args = parser.parse_args()

    run_id = new_run()
    work = Path(".run/bench") / run_id
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(topic_prefix=f"bench-{run_id}.", gateway_port=free_port())
    ensure_topics(settings)
    register_catalog(registry_client(settings.schema_registry_url), settings)
    secrets = {name: value.encode() for name, value in SECRETS.items()}

    with running_gateway(settings, work / "gateway.log", SECRETS):
        asyncio.run(run_load(settings, rate=0, count=300, seed=99, secrets=secrets))  # warm-up
        flat_out = asyncio.run(
            run_load(
                settings,
                rate=0,
                count=args.count,
                seed=1,
                secrets=secrets,
                concurrency=args.concurrency,
            )
        )
        steady = asyncio.run(
            run_load(
                settings,
                rate=args.steady_rate,
                duration=args.steady_seconds,
                seed=2,
                secrets=secrets,
                concurrency=args.concurrency,
            )
        )

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateway_processes": 1,
        "partitions": settings.partitions,
        "flat_out": figures(flat_out) | {"concurrency": args.concurrency},
        "steady": figures(steady) | {"target_per_s": args.steady_rate},
    }
    print("gateway benchmark: signed provider webhooks over HTTP, acks=all before each answer")
    for name, row in (("flat out", results["flat_out"]), ("steady", results["steady"])):
        print(
            f"  {name:8} {row['webhooks']:>6} webhooks at {row['per_s']:>7,.0f}/s   "
            f"p50 {row['p50_ms']:6.1f} ms  p95 {row['p95_ms']:6.1f} ms  "
            f"p99 {row['p99_ms']:6.1f} ms   answers {row['answers']}"
        )
    print(f"  written to {write_results('gateway', results)}")


if __name__ == "__main__":
    run_then_clean(main)
