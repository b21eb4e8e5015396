"""Benchmark of each sink destination against its local server on this machine: the
delivery runtime in this process, consuming from the real broker.

* sustained: a backlog of records delivered as fast as the sink goes (records/s);
* latency: a steady feed, each record's confirmation by its destination minus its write
  to Kafka (p50/p99).

    .venv/bin/python -m tests.bench.bench_sinks [--backlog 4000] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from connectors.delivery import Destination, Outcome, Rejected
from connectors.sinks.crm.hubspot import HubSpotWriter
from connectors.sinks.crm.salesforce import SalesforceWriter
from connectors.sinks.crm.sql import open_store
from connectors.sinks.ledger import DeliveryLedger
from connectors.sinks.notify.email import EmailChannel
from connectors.sinks.notify.slack import SlackChannel
from connectors.sinks.notify.webhook import WebhookChannel
from connectors.sinks.runtime import Limits, Sink
from streams.registry import register_catalog
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CRM_COMMANDS, DEAD_LETTERS, NOTIFICATIONS, TopicSpec, ensure_topics
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import percentile
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.salesforce import FakeSalesforce
from tests.integration.test_sinks import STAGES, story
from tests.kafka_helpers import producer
from tests.sinks.notify_servers import (
    SlackWebhook,
    WebhookReceiver,
    sample_notification,
    smtp_server,
)

LIMITS = Limits(rate_per_s=10_000, burst=100, concurrency=8)


class Timed:
    """The destination under test, noting when it confirmed each record."""

    def __init__(self, inner: Destination, key: str) -> None:
        self.inner, self.key = inner, key
        self.name, self.max_batch, self.in_order = inner.name, inner.max_batch, inner.in_order
        self.confirmed: dict[str, float] = {}
        self.rejected: set[str] = set()
        self.first_call = 0.0

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        self.first_call = self.first_call or time.time()
        outcomes = await self.inner.deliver(records)
        now = time.time()
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome is None:
                self.confirmed[str(record[self.key])] = now
            elif isinstance(outcome, Rejected):
                self.rejected.add(str(record[self.key]))
        return outcomes

    async def close(self) -> None:
        await self.inner.close()


SALESFORCE_STAGES = ["Prospecting", "Qualification", "Needs Analysis", "Closed Won"]


def crm_records(count: int, tag: str, stages: Sequence[str] = STAGES) -> list[dict[str, Any]]:
    stories = [story(n, stages) for n in range((count + 6) // 7)]
    # Contacts' commands interleaved, as they arrive in life: step k of every contact.
    records = [s[k] for k in range(7) for s in stories][:count]
    # Distinct contacts per run, so each run's contacts are new to the destination.
    return [
        {
            **r,
            "command_id": f"{tag}-{r['command_id']}",
            "contact_id": f"{tag}-{r['contact_id']}",
            "payload": {
                **r["payload"],
                **{
                    k: f"{tag}-{v}"
                    for k, v in r["payload"].items()
                    if k in ("deal_id", "task_id", "note_id")
                },
                **(
                    {"email": f"{tag}.{r['payload']['email']}"} if r["payload"].get("email") else {}
                ),
            },
        }
        for r in records
    ]


def notifications(count: int, tag: str, channel: str) -> list[dict[str, Any]]:
    return [
        sample_notification(
            notification_id=f"{tag}-{i}", channel=channel, contact_id=f"{tag}-c{i % 500}"
        )
        for i in range(count)
    ]


async def drive(
    settings: Settings,
    spec: TopicSpec,
    destination: Timed,
    records: list[dict[str, Any]],
    rate: float | None,
    ledger: DeliveryLedger | None = None,
) -> dict[str, float]:
    """Write ``records`` (all at once, or at ``rate`` a second) and run a sink until its
    destination confirmed them all."""
    registry = registry_client(settings.schema_registry_url)
    serde = AvroSerde(
        registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
    )
    sink = Sink(
        name=f"bench-{destination.name}",
        settings=settings,
        serde=serde,
        dead_letter_serde=AvroSerde(
            registry, DEAD_LETTERS.schema, DEAD_LETTERS.full_name(settings)
        ),
        dead_letter_topic=DEAD_LETTERS.full_name(settings),
        destinations={destination.name: destination},
        route=lambda record: destination.name,
        key_field=destination.key,
        limits=LIMITS,
        ledger=ledger,
    )
    out = producer(settings)
    written: dict[str, float] = {}

    def write(batch: list[dict[str, Any]]) -> None:
        for record in batch:
            written[str(record[destination.key])] = time.time()
            out.produce(
                serde.topic, key=str(record["contact_id"]).encode(), value=serde.encode(record)
            )
        out.poll(0)

    stop = asyncio.Event()
    if rate is None:
        write(records)
        out.flush(30)
    running = asyncio.create_task(sink.run(stop))
    if rate is not None:
        await sink.assigned.wait()
        start = time.perf_counter()
        for i in range(0, len(records), max(int(rate / 20), 1)):
            await asyncio.sleep(max(start + i / rate - time.perf_counter(), 0))
            write(records[i : i + max(int(rate / 20), 1)])
        out.flush(30)
    deadline = time.monotonic() + 300
    while len(destination.confirmed) + len(destination.rejected) < len(records):
        if running.done() or time.monotonic() > deadline:
            await running
            raise TimeoutError(
                f"{destination.name}: {len(destination.confirmed)} of {len(records)}"
            )
        await asyncio.sleep(0.05)
    stop.set()
    await running
    if destination.rejected:
        raise RuntimeError(f"{destination.name} rejected {len(destination.rejected)} records")
    latencies = [destination.confirmed[k] - written[k] for k in written]
    elapsed = max(destination.confirmed.values()) - destination.first_call
    return {
        "records": len(records),
        "records_per_s": round(len(records) / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


@contextmanager
def destinations(
    workdir: Path, postgres_url: str | None
) -> Iterator[dict[str, Callable[[], tuple[Destination, TopicSpec, str]]]]:
    """Each destination under test, with its local server running."""
    with ExitStack() as stack:
        hubspot = stack.enter_context(FakeHubSpot.running())
        salesforce = stack.enter_context(FakeSalesforce.running())
        smtp = stack.enter_context(smtp_server())
        slack = stack.enter_context(SlackWebhook.running())
        receiver = stack.enter_context(WebhookReceiver.running(b"bench-key"))
        found: dict[str, Callable[[], tuple[Destination, TopicSpec, str]]] = {
            "sql (SQLite)": lambda: (
                open_store(f"sqlite:///{workdir / f'crm-{uuid.uuid4().hex}.db'}"),
                CRM_COMMANDS,
                "command_id",
            ),
            "hubspot": lambda: (
                HubSpotWriter(hubspot.token, base_url=hubspot.url),
                CRM_COMMANDS,
                "command_id",
            ),
            "salesforce": lambda: (
                SalesforceWriter(salesforce.url, salesforce.token),
                CRM_COMMANDS,
                "command_id",
            ),
            "email (SMTP)": lambda: (
                EmailChannel(smtp.host, smtp.port, "bench@localhost"),
                NOTIFICATIONS,
                "notification_id",
            ),
            "slack": lambda: (SlackChannel(slack.webhook_url), NOTIFICATIONS, "notification_id"),
            "webhook": lambda: (
                WebhookChannel(receiver.hook_url, b"bench-key"),
                NOTIFICATIONS,
                "notification_id",
            ),
        }
        if postgres_url:
            found["sql (PostgreSQL)"] = lambda: (
                open_store(postgres_url),
                CRM_COMMANDS,
                "command_id",
            )
        yield found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--postgres-url", help="[default: infra/postgres if it is up]")
    parser.add_argument("--only", help="One destination, by the name printed.")
    args = parser.parse_args()
    import subprocess

    postgres_url = args.postgres_url
    if postgres_url is None:
        done = subprocess.run(
            ["bash", "infra/postgres/postgres.sh", "url"],
            capture_output=True,
            text=True,
            check=False,
        )
        up = subprocess.run(
            ["bash", "infra/postgres/postgres.sh", "status"], capture_output=True, check=False
        )
        postgres_url = done.stdout.strip() if up.returncode == 0 and done.returncode == 0 else None

    base = Settings()
    results: dict[str, Any] = {
        "backlog": args.backlog,
        "rate": args.rate,
        "seconds": args.seconds,
        "destinations": {},
    }
    print(
        f"sinks: one sink process per destination, batch {base.sink_batch_size}, "
        f"concurrency {LIMITS.concurrency}; backlog {args.backlog}, "
        f"steady {args.rate:g}/s for {args.seconds:g} s"
    )
    with TemporaryDirectory() as tmp, destinations(Path(tmp), postgres_url) as found:
        for name, make in found.items():
            if args.only and name != args.only:
                continue
            figures: dict[str, Any] = {}
            for mode, count, rate in (
                ("sustained", args.backlog, None),
                ("steady", int(args.rate * args.seconds), args.rate),
            ):
                tag = new_run()
                settings = base.model_copy(
                    update={
                        "topic_prefix": f"bench-{tag}.",
                        "app_id": f"bench-{tag}",
                        "partitions": 6,
                    }
                )
                ensure_topics(settings)
                register_catalog(registry_client(settings.schema_registry_url), settings)
                destination, spec, key = make()
                stages = SALESFORCE_STAGES if name == "salesforce" else STAGES
                records = (
                    crm_records(count, tag, stages)
                    if spec is CRM_COMMANDS
                    else notifications(count, tag, "EMAIL")
                )
                ledger = (
                    DeliveryLedger(f"sqlite:///{Path(tmp) / f'ledger-{tag}.db'}")
                    if spec is NOTIFICATIONS
                    else None
                )
                figures[mode] = asyncio.run(
                    drive(settings, spec, Timed(destination, key), records, rate, ledger)
                )
            results["destinations"][name] = figures
            s, d = figures["sustained"], figures["steady"]
            print(
                f"  {name:<18} sustained {s['records_per_s']:>8.1f}/s   "
                f"steady {args.rate:g}/s: p50 {d['latency_p50_ms']:>7.1f} ms  "
                f"p99 {d['latency_p99_ms']:>7.1f} ms"
            )
    print(f"  -> {write_results('sinks', results)}")


if __name__ == "__main__":
    run_then_clean(main)
