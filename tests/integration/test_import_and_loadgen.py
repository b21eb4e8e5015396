"""Backfill import and the load generator, against the real broker (and gateway)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sources.loadgen import run_load
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.conftest import free_port
from tests.kafka_helpers import (
    read_all,
    running_gateway,
    running_worker,
    settings_env,
    worker_metric,
)
from tests.webhooks import SECRETS, expected_event_ids, fixture

pytestmark = pytest.mark.integration

CONTACTS_CSV = """\
id,email,phone,first_name,last_name,company,lifecyclestage,updated_at
4501,Ana.Silva@example.com,+1 415 555 0132,Ana,Silva,Silva Bakery,customer,2026-10-01T09:00:00Z
4502,not-an-address,,Bruno,Costa,,lead,2026-10-02T09:00:00Z
4503,carla@example.net,(415) 555-0177,Carla,M,,lead,yesterday
,,,Nobody,Known,,lead,
4504,,+351 912 345 678,Dev,Okafor,Okafor Ltd,opportunity,
"""


def run_import(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "import", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def events_in(settings: Settings, registry: SchemaRegistryClient) -> dict[str, dict[str, Any]]:
    topic = CONTACT_EVENTS.full_name(settings)
    serde = AvroSerde(registry, "contact_event", topic, discriminator="event_type")
    return {e["event_id"]: e for e in (serde.decode(m.value()) for m in read_all(settings, topic))}


def test_a_crm_export_imports_the_good_rows_and_reports_the_bad(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_catalog(registry, settings)
    export = tmp_path / "contacts.csv"
    export.write_text(CONTACTS_CSV)

    done = run_import(settings, str(export), "--source", "contacts", "--system", "hubspot")
    assert done.returncode == 0, done.stderr
    assert "5 rows: 2 accepted (2 events), 3 rejected" in done.stdout
    report = [json.loads(line) for line in (tmp_path / "contacts.csv.rejected.jsonl").open()]
    assert [(r["line"], r["field"]) for r in report] == [(3, "email"), (4, "updated_at"), (5, None)]
    assert "'not-an-address' is not an e-mail address" in report[0]["reason"]
    assert "'yesterday' is not an ISO 8601 time" in report[1]["reason"]
    assert "identifies nobody" in report[2]["reason"]
    assert report[0]["row"]["first_name"] == "Bruno"

    events = events_in(settings, registry)
    assert len(events) == 2
    ana = next(e for e in events.values() if e["identity"]["crm_id"] == "4501")
    assert ana["event_type"] == "CONTACT_UPDATED"
    assert ana["source_system"] == "hubspot"
    assert ana["identity"]["email"] == "ana.silva@example.com"
    assert ana["identity"]["phone"] == "+14155550132"
    assert ana["event_time"] == datetime(2026, 10, 1, 9, tzinfo=UTC)
    assert ana["payload"]["properties"] == {
        "first_name": "Ana",
        "last_name": "Silva",
        "company": "Silva Bakery",
        "lifecyclestage": "customer",
    }

    again = run_import(settings, str(export), "--source", "contacts", "--system", "hubspot")
    assert again.returncode == 0, again.stderr
    # A re-import is the same events again, which the pipeline's dedup ignores.
    assert set(events_in(settings, registry)) == set(events)


def test_a_jsonl_of_provider_payloads_imports_like_the_gateway_maps(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_catalog(registry, settings)
    lines = [
        json.dumps(json.loads(fixture("stripe_invoice_paid.json"))),
        '{"id": "evt_broken", "type": "invoice.paid"',
        json.dumps(json.loads(fixture("stripe_payment_intent_succeeded.json"))),
    ]
    dump = tmp_path / "stripe.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    done = run_import(settings, str(dump), "--source", "stripe")
    assert done.returncode == 0, done.stderr
    assert "3 rows: 2 accepted (2 events), 1 rejected" in done.stdout
    [bad] = [json.loads(line) for line in (tmp_path / "stripe.jsonl.rejected.jsonl").open()]
    assert bad["line"] == 2
    assert bad["reason"].startswith("body is not valid JSON")
    assert set(events_in(settings, registry)) == {
        "stripe:evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "stripe:evt_3MtwBwLkdIwHu7ix0dAqGwPc",
    }


def test_the_load_generator_feeds_the_gateway_reproducibly(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"gateway_port": free_port()})
    ensure_topics(settings)
    register_catalog(registry, settings)
    secrets = {name: value.encode() for name, value in SECRETS.items()}
    with running_gateway(settings, tmp_path / "gateway.log", SECRETS):
        report = asyncio.run(run_load(settings, rate=0, count=300, seed=11, secrets=secrets))
    assert report.statuses == {"200": 300}
    assert len(report.by_source) >= 8  # many systems, interleaved
    assert set(events_in(settings, registry)) == expected_event_ids(11, 300)


def test_the_load_generator_can_write_straight_to_kafka(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    ensure_topics(settings)
    register_catalog(registry, settings)
    report = asyncio.run(run_load(settings, rate=0, count=200, seed=5, target="kafka"))
    assert report.statuses == {"published": 200}
    assert set(events_in(settings, registry)) == expected_event_ids(5, 200)


def test_a_worker_takes_in_every_event_the_gateway_published(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Gateway → Kafka → worker: the producers' settings are ones the workers can read."""
    settings = settings.model_copy(update={"gateway_port": free_port()})
    ensure_topics(settings)
    register_catalog(registry, settings)
    secrets = {name: value.encode() for name, value in SECRETS.items()}
    with running_gateway(settings, tmp_path / "gateway.log", SECRETS):
        report = asyncio.run(run_load(settings, rate=0, count=120, seed=3, secrets=secrets))
    assert report.statuses == {"200": 120}
    published = len(events_in(settings, registry))

    with running_worker(settings, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + 60
        while (
            worker_metric(settings, "switchboard_events_total{") < published
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
        assert worker_metric(settings, "switchboard_events_total{") == published
        assert worker.poll() is None
    assert b"Traceback" not in (tmp_path / "worker.log").read_bytes()


def test_ragged_rows_are_reported_one_by_one_and_a_bom_or_accent_changes_nothing(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Issue 20, item 16: a row with a cell too many or too few is rejected alone (it used
    to abort the import), and the file is UTF-8 with or without a byte-order mark, in any
    locale."""
    ensure_topics(settings)
    register_catalog(registry, settings)
    export = tmp_path / "contacts.csv"
    export.write_bytes(
        "\ufeffid,email,first_name,company\n"
        "4601,jose@example.com,José,Café Zoë\n"
        "4602,extra@example.com,Extra,Acme,surplus\n"
        "4603,short@example.com\n"
        "4604,ines@example.com,Inês,Ação Lda\n".encode()
    )
    env = settings_env(settings) | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "import", str(export), "--source", "contacts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4 rows: 2 accepted (2 events), 2 rejected" in done.stdout
    report = [
        json.loads(line)
        for line in (tmp_path / "contacts.csv.rejected.jsonl").read_text("utf-8").splitlines()
    ]
    assert [(r["line"], r["field"]) for r in report] == [(3, None), (4, "first_name")]
    assert report[0]["reason"] == "row has 5 cells, the header 4 columns"
    assert report[1]["reason"] == "row has 2 cells, the header 4 columns (no first_name, company)"
    events = events_in(settings, registry)
    by_id = {e["identity"]["crm_id"]: e for e in events.values()}
    assert set(by_id) == {"4601", "4604"}
    assert by_id["4601"]["identity"]["email"] == "jose@example.com"  # not "\ufeffid"
    assert by_id["4601"]["payload"]["properties"] == {"first_name": "José", "company": "Café Zoë"}
    assert by_id["4604"]["payload"]["properties"]["company"] == "Ação Lda"


def test_rows_kafka_never_took_are_not_counted_accepted_and_the_import_fails(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Issue 20, item 16: flush()'s answer is no longer ignored. With no broker to take
    them, no row is accepted, each is listed, and the command exits non-zero."""
    ensure_topics(settings)
    register_catalog(registry, settings)
    export = tmp_path / "contacts.csv"
    export.write_text("id,email\n4701,a@example.com\n4702,b@example.com\n", encoding="utf-8")
    nowhere = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    from connectors.sources.importer import run_import as import_in_process

    summary = import_in_process(
        nowhere, export, "contacts", show_progress=False, flush_timeout_s=2.0
    )
    assert summary.rows == 2 and summary.accepted_rows == 0
    assert summary.undelivered == [
        "line 2: not acknowledged by Kafka within 2 s",
        "line 3: not acknowledged by Kafka within 2 s",
    ]
