"""Invoices in Stripe on the real broker: completed billable jobs go through a real
worker to ``billing-commands`` and through a real ``switchboard sink billing`` process to
a local Stripe, each invoiced once, even when the sink is killed (SIGKILL) in the middle
of its calls and started again; 429s and 5xxs are retried, a refusal is dead-lettered
naming the field, without the API key."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import BILLING_COMMANDS
from tests.fakes.stripe import FakeStripe
from tests.integration.test_sinks import sink_dead_letters
from tests.integration.test_sla_timers import T0, Pipeline, with_clock
from tests.integration.test_workflows import with_workflows
from tests.kafka_helpers import producer, read_all, running_sink, running_worker, wait_for
from tests.records import crm_command

pytestmark = pytest.mark.integration

JOBS = 12


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe.running() as fake:
        yield fake


def billing_settings(settings: Settings, stripe: FakeStripe, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "stripe_api_url": stripe.url,
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "sink_batch_size": 4,
            "sink_backoff_base_s": 0.1,
            "sink_backoff_cap_s": 1.0,
            "metrics_port": 0,
        }
    )


def job_completed(n: int, event: str = "completed", **payload: Any) -> tuple[str, dict[str, Any]]:
    email = f"client{n}@example.com"
    at = T0 + timedelta(minutes=n)
    body = {
        "job_id": f"J-{n}",
        "job_type": "boiler_service",
        "status": "completed",
        "previous_status": "in_progress",
        "technician": "tech-sam",
        "scheduled_for": None,
        "completed_at": at,
        "billable": True,
        "amount_minor": None,
        "currency": "EUR",
        "line_items": [
            {"description": "Annual service", "quantity": 1, "unit_amount_minor": 12_000 + n},
            {"description": "Filter", "quantity": 2, "unit_amount_minor": 1_500},
        ],
    } | payload
    return f"email:{email}", {
        "event_id": f"fieldservice:J-{n}-{event}",
        "event_type": "JOB_STATUS_CHANGED",
        "source_system": "fieldservice",
        "event_time": at,
        "received_time": at,
        "identity": {"email": email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "payload": body,
    }


def test_each_completed_job_is_invoiced_once_even_when_the_sink_is_killed_mid_call(
    settings: Settings, registry: SchemaRegistryClient, stripe: FakeStripe, tmp_path: Path
) -> None:
    settings, _ = with_clock(settings, tmp_path, T0)
    settings = billing_settings(with_workflows(settings, tmp_path), stripe, tmp_path)
    p = Pipeline(settings, registry, tmp_path)
    billing = AvroSerde(
        registry, "crm_command", BILLING_COMMANDS.full_name(settings), discriminator="command_type"
    )
    story = [job_completed(n) for n in range(JOBS)]
    story.append(job_completed(0, event="completed-again"))  # the same job reported twice
    story.append(job_completed(JOBS, billable=False))  # not billable: no invoice
    with running_worker(settings, tmp_path / "worker.log"):
        p.send(p.events, story)
        wait_for(lambda: len(p.decisions("invoice_requested")) == JOBS + 1, "the decisions")
    commands = [billing.decode(m.value()) for m in read_all(settings, billing.topic)]
    assert len(commands) == JOBS + 1
    assert len({c["command_id"] for c in commands}) == JOBS  # job 0's twice, one id

    secrets = {"stripe_api_key": stripe.api_key}
    # Stripe does each call at once but answers it a second late: whenever the sink is
    # killed, calls are made that its committed offsets do not cover.
    stripe.answer_delay_s = 1
    with running_sink(settings, "billing", tmp_path / "first.log", secrets) as first:
        wait_for(lambda: stripe.created("/v1/invoices") >= 2, "the first invoices", 60)
        time.sleep(0.5)
        first.kill()  # SIGKILL, in the middle of calls
        first.wait()
    stripe.answer_delay_s = 0
    finalised = [i for i in stripe.invoices.values() if i["status"] == "open"]
    assert len(finalised) < JOBS, "the first sink finished before it was killed"

    with running_sink(settings, "billing", tmp_path / "second.log", secrets):
        wait_for(
            lambda: sum(i["status"] == "open" for i in stripe.invoices.values()) == JOBS,
            "every job's invoice finalised",
            90,
        )
        time.sleep(1)  # an invoice made twice would show up now
    assert stripe.replayed > 0, "no call was repeated: the kill missed the window"
    per_job = Counter(i["metadata"]["job_id"] for i in stripe.invoices.values())
    assert per_job == {f"J-{n}": 1 for n in range(JOBS)}
    assert len(stripe.customers) == JOBS
    for n in range(JOBS):
        (bill,) = stripe.invoices_for(f"client{n}@example.com")
        assert (bill["status"], bill["currency"], bill["amount_due"]) == ("open", "eur", 15_000 + n)
        assert len(stripe.items_of(bill["id"])) == 2
    assert len(stripe.items) == 2 * JOBS
    assert stripe.created("/v1/invoices") == JOBS
    assert sink_dead_letters(settings, registry) == []


def command(n: int, currency: str = "EUR") -> dict[str, Any]:
    payload = {
        "job_id": f"J-{n}",
        "job_system": "fieldservice",
        "email": f"client{n}@example.com",
        "name": None,
        "currency": currency,
        "amount_minor": 9_900,
        "lines": [{"description": "Repair", "quantity": 1, "unit_amount_minor": 9_900}],
        "description": None,
    }
    return crm_command("CREATE_INVOICE", f"c-{n}", payload, command_id=f"cmd-invoice-{n}")


def test_429s_and_5xxs_are_retried_and_a_refused_invoice_is_dead_lettered_naming_the_field(
    settings: Settings, registry: SchemaRegistryClient, stripe: FakeStripe, tmp_path: Path
) -> None:
    settings = billing_settings(settings, stripe, tmp_path)
    Pipeline(settings, registry, tmp_path)  # topics and schemas
    billing = AvroSerde(
        registry, "crm_command", BILLING_COMMANDS.full_name(settings), discriminator="command_type"
    )
    stripe.rate_limit(retry_after="1", count=2)
    stripe.api_errors(2)
    out = producer(settings)
    for record in [command(1), command(2, currency="XYZ"), command(3)]:
        out.produce(billing.topic, key=record["contact_id"].encode(), value=billing.encode(record))
    assert out.flush(30) == 0
    with running_sink(
        settings, "billing", tmp_path / "sink.log", {"stripe_api_key": stripe.api_key}
    ):
        wait_for(
            lambda: sum(i["status"] == "open" for i in stripe.invoices.values()) == 2,
            "the two good invoices",
            60,
        )
        wait_for(lambda: len(sink_dead_letters(settings, registry)) == 1, "the dead letter", 30)
    (letter,) = sink_dead_letters(settings, registry)
    assert letter["stage"] == "sink-stripe"
    assert letter["error_type"] == "Rejected"
    assert "field currency" in letter["reason"]
    assert "Invalid currency: xyz" in letter["reason"]
    assert stripe.api_key not in repr(letter)
    assert billing.decode(letter["original_value"])["command_id"] == "cmd-invoice-2"
    assert stripe.created("/v1/invoices") == 2
    # The two 429s and two 500s were answered (5 calls per good invoice, 3 for the bad
    # one, 4 failures) and retried, as the sink's log says.
    assert len(stripe.requests) >= 2 * 5 + 3 + 4
    log = (tmp_path / "sink.log").read_text()
    assert "HTTP 429" in log and "HTTP 500" in log and "retrying" in log
    assert stripe.api_key not in log
