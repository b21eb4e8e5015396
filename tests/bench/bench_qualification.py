"""Multi-system qualification on this machine: Typeform leads posted to the gateway at a
steady rate, with the worker, the enrichment connector (against the provider on
loopback, tests/fakes/enrichment.py), the router and the notification sink running:

* form -> first outreach: from the webhook's POST to the new-web-lead welcome e-mail in
  the outbox (p50/p95/p99);
* form -> rep told: to the router's new_lead e-mail for the lead's rep, which for these
  leads waits for enrichment (the form alone scores them below the routing band; the
  provider's firmographics lift them), so it includes the provider's round trip;
* the provider's calls: a company call per domain, whatever the number of leads.

Each lead's profile names a time zone where it is daytime now, so quiet hours hold
nothing back (they would, honestly, at night on the contact's clock).

    .venv/bin/python -m tests.bench.bench_qualification [--leads 200] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from connectors.sources.enrichment import TOKEN_SECRET
from streams.serde import AvroSerde, registry_client
from streams.settings import secret_env
from streams.topics import REP_ROSTER
from tests.bench import new_run, run_then_clean, write_results
from tests.bench.bench_core import fresh, percentile
from tests.conftest import free_port
from tests.fakes.enrichment import FakeEnrichment
from tests.integration.test_qualification import rep, typeform
from tests.kafka_helpers import (
    _running,
    producer,
    running_gateway,
    running_sink,
    running_worker,
    settings_env,
)
from tests.webhooks import SECRETS, post, signed

BENCH = Path(".run/bench")
KEY = "sk_bench_enrichment"
DOMAINS = 20
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
ZONES = ("America/Los_Angeles", "America/New_York", "Europe/Lisbon", "Asia/Kolkata", "Asia/Tokyo")


def daytime_zone() -> str:
    """A zone where it is between 09:00 and 19:00 now."""
    now = datetime.now(UTC)
    return next(z for z in ZONES if 9 <= now.astimezone(ZoneInfo(z)).hour < 19)


def companies() -> dict[str, dict[str, Any]]:
    return {
        f"co{n}.example": {
            "name": f"Company {n}",
            "category": {"industry": "SaaS"},
            "metrics": {"employees": 120, "annualRevenue": 20_000_000},
            "geo": {"countryCode": "US"},
        }
        for n in range(DOMAINS)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="forms per second")
    args = parser.parse_args()

    run = new_run()
    folder = BENCH / run
    outbox = folder / "outbox.jsonl"
    base = fresh(run, 6)
    registry = registry_client(base.schema_registry_url)
    roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(base))
    out = producer(base)
    for each in (rep("rep-sf-1", "sf-metro"), rep("rep-sf-2", "sf-metro")):
        each["capacity"] = 100_000
        out.produce(roster.topic, key=each["rep_id"].encode(), value=roster.encode(each))
    out.flush(10)
    zone = daytime_zone()
    emails = [f"lead{n}.{run}@co{n % DOMAINS}.example" for n in range(args.leads)]
    posted: dict[str, float] = {}
    seen: dict[tuple[str, str], float] = {}

    with ExitStack() as stack:
        provider = stack.enter_context(FakeEnrichment.running(KEY, companies()))
        settings = base.model_copy(
            update={
                "gateway_port": free_port(),
                "notify_outbox": outbox,
                "enrichment_url": provider.url,
                "enrichment_rate_per_s": 50.0,
            }
        )
        stack.enter_context(running_worker(settings, folder / "worker.log"))
        stack.enter_context(running_gateway(settings, folder / "gateway.log", SECRETS))
        notify = settings.model_copy(update={"metrics_port": free_port()})
        stack.enter_context(running_sink(notify, "notify", folder / "notify.log"))
        enrich = settings.model_copy(update={"metrics_port": free_port()})
        env = settings_env(enrich) | {
            "SWITCHBOARD_LOG_LEVEL": "info",
            secret_env(TOKEN_SECRET): KEY,
        }
        log = folder / "enrich.log"
        stack.enter_context(
            _running(["enrich"], env, log, lambda: b"consuming" in log.read_bytes(), 30)
        )
        url = f"http://127.0.0.1:{settings.gateway_port}/webhooks/typeform"
        started = datetime.now(UTC)

        def watch(stop: threading.Event) -> None:
            """Each outbox line's arrival, as the bench sees it (polled every 5 ms)."""
            offset = 0
            while not stop.is_set():
                if outbox.exists():
                    with outbox.open() as lines:
                        lines.seek(offset)
                        for line in lines:
                            if not line.endswith("\n"):
                                break
                            offset += len(line.encode())
                            message = json.loads(line)
                            who = message["recipient"]
                            if message["template"] == "new_lead":
                                ids = message["context"]["identifiers"]
                                who = next((e for e in emails if f"email:{e}" in ids), who)
                            seen.setdefault((who, message["template"]), time.perf_counter())
                time.sleep(0.005)

        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
        watcher.start()
        first = time.perf_counter()
        for n, email in enumerate(emails):
            time.sleep(max(0.0, first + n / args.rate - time.perf_counter()))
            at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            body = typeform(f"bench-{run}-{n}", f"tok-{run}-{n}", f"Lead {n}", email, "94110", 0)
            form = json.loads(body)
            form["form_response"]["submitted_at"] = form["form_response"]["landed_at"] = at
            form["form_response"]["definition"]["fields"].append(
                {"id": "TzZ", "ref": "timezone", "type": "short_text", "title": "timezone"}
            )
            form["form_response"]["answers"].append(
                {
                    "type": "text",
                    "text": zone,
                    "field": {"id": "TzZ", "type": "short_text", "ref": "timezone"},
                }
            )
            raw = json.dumps(form).encode()
            posted[email] = time.perf_counter()
            answer = post(url, *signed("typeform", raw, url))
            assert answer.status == 200, answer
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline and sum((e, "new_lead") in seen for e in emails) < len(
            emails
        ):
            time.sleep(0.2)
        stop.set()
        watcher.join()

    outreach = [
        seen[(e, "web_lead_welcome")] - posted[e] for e in emails if (e, "web_lead_welcome") in seen
    ]
    told = [seen[(e, "new_lead")] - posted[e] for e in emails if (e, "new_lead") in seen]
    row = {
        "leads": args.leads,
        "rate_per_s": args.rate,
        "started": started.isoformat(),
        "outreach_sent": len(outreach),
        "rep_told": len(told),
        "form_to_first_outreach_s": {q: percentile(outreach, p) for q, p in QUANTILES},
        "form_to_rep_told_s": {q: percentile(told, p) for q, p in QUANTILES},
        "company_calls": len(provider.looked_up("companies")),
        "person_calls": len(provider.looked_up("people")),
        "domains": DOMAINS,
    }
    o, t = row["form_to_first_outreach_s"], row["form_to_rep_told_s"]
    print(
        f"qualification: {args.leads} Typeform leads at {args.rate:g}/s through gateway, "
        f"worker, enrichment and notify sink"
    )
    print(
        f"  form -> first outreach in the outbox p50/p95/p99 s  {o['p50']:.3f} {o['p95']:.3f} "
        f"{o['p99']:.3f}   ({len(outreach)}/{args.leads} sent)"
    )
    print(
        f"  form -> rep told (after enrichment)  p50/p95/p99 s  {t['p50']:.3f} {t['p95']:.3f} "
        f"{t['p99']:.3f}   ({len(told)}/{args.leads} assigned)"
    )
    print(
        f"  provider calls: {row['company_calls']} company calls for {DOMAINS} domains, "
        f"{row['person_calls']} person calls"
    )
    print(f"  written to {write_results('qualification', row)}")


if __name__ == "__main__":
    run_then_clean(main)
