"""Job records on the real broker (issue 22): a paid invoice makes a job record in the SQL
CRM store and tells the operations channel on a local Slack server; the field system's
"completed" updates that record, and the packaged job-completed workflow schedules the
follow-up inspection as a job record of its own. Worker, CRM sink and notification sink
are real processes; the file clock moves the workflow's days in seconds. The same events
sent again change nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sinks.crm.sql import SqlCrmStore, open_store
from connectors.sinks.notify.templates import render_slack
from processors.ids import decision_id
from processors.workflows.library import DEFAULT_LIBRARY
from streams.clock import FileClock
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.test_sla_timers import T0, Pipeline, with_clock
from tests.integration.test_workflows import with_workflows
from tests.kafka_helpers import running_sink, running_worker, wait_for
from tests.sinks.notify_servers import SlackWebhook

pytestmark = pytest.mark.integration

EMAIL = "dana.ortiz@example.com"
PAID_AT, DONE_AT = T0 + timedelta(minutes=5), T0 + timedelta(minutes=60)


def event(
    event_id: str,
    kind: str,
    at_minute: int,
    payload: dict[str, Any],
    profile: dict[str, tuple[str, str]] | None = None,
) -> tuple[str, dict[str, Any]]:
    at = T0 + timedelta(minutes=at_minute)
    return f"email:{EMAIL}", {
        "event_id": event_id,
        "event_type": kind,
        "source_system": event_id.split(":")[0],
        "event_time": at,
        "received_time": at,
        "identity": {"email": EMAIL, "phone": "+14155550177", "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "profile": {k: {"value": v, "origin": o} for k, (v, o) in (profile or {}).items()},
        "payload": payload,
    }


QUOTE = event(
    "typeform:quote-1",
    "FORM_SUBMITTED",
    0,
    {"form_id": "quote", "form_name": "Quote", "page_url": None, "fields": {}},
    {
        "first_name": ("Dana", "self"),
        "last_name": ("Ortiz", "self"),
        "service": ("Boiler installation", "self"),
    },
)
PAID = event(
    "stripe:evt-paid",
    "INVOICE_PAID",
    5,
    {"invoice_id": "in_1", "amount_minor": 480000, "currency": "usd", "customer_id": "cus_1"},
    {
        "address": ("12 Elm St", "billing"),
        "city": ("Springfield", "billing"),
        "postcode": ("01101", "billing"),
    },
)
COMPLETED = event(
    "servicetitan:job-1-completed",
    "JOB_STATUS_CHANGED",
    60,
    {
        "job_id": "J-1",
        "job_type": "boiler_installation",
        "status": "completed",
        "previous_status": "in_progress",
        "technician": "tech-sam",
        "scheduled_for": None,
        "completed_at": None,
    },
)


def surveyed(p: Pipeline) -> bool:
    return any(n["template"] == "satisfaction_survey" for n in p.read(p.notices))


@dataclass(frozen=True)
class Running:
    pipeline: Pipeline
    store: SqlCrmStore
    slack: SlackWebhook
    clock: Path


@pytest.fixture
def running(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> Iterator[Running]:
    settings, clock = with_clock(settings, tmp_path, T0)
    settings = with_workflows(
        settings, tmp_path, (DEFAULT_LIBRARY / "job-completed.yaml").read_text()
    )
    settings = settings.model_copy(
        update={
            "crm_database_url": f"sqlite:///{tmp_path / 'crm.db'}",
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "notify_outbox": tmp_path / "outbox.jsonl",  # e-mail (the survey) goes here
            "slack_recipients": {"#ops": "slack_ops"},
            "operations_recipients": ["#ops"],
        }
    )
    pipeline = Pipeline(settings, registry, tmp_path)
    store = open_store(settings.crm_database_url)
    with ExitStack() as stack:
        slack = stack.enter_context(SlackWebhook.running("#general"))
        secrets = {"slack_ops": slack.hook("#ops")}
        stack.enter_context(running_worker(settings, tmp_path / "worker.log"))
        for which in ("crm", "notify"):
            each = settings.model_copy(update={"metrics_port": free_port()})
            stack.enter_context(running_sink(each, which, tmp_path / f"{which}.log", secrets))
        yield Running(pipeline, store, slack, clock)
    stack.close()


def test_a_payment_makes_a_job_and_tells_ops_and_the_completed_job_schedules_inspection(
    running: Running,
) -> None:
    p, store, slack = running.pipeline, running.store, running.slack
    p.send(p.events, [QUOTE, PAID])
    wait_for(lambda: len(store.rows("jobs")) == 1 and len(slack.posted) == 1, "the paid job")

    [contact] = [r for r in store.rows("contacts")]
    contact_id = contact["contact_id"]
    job_id = decision_id("job", contact_id, "paid", "in_1")
    [job] = store.rows("jobs")
    assert job == {
        "job_id": job_id,
        "contact_id": contact_id,
        "job_type": "service",
        "status": "pending",
        "title": "Boiler installation for Dana Ortiz",
        "service": "Boiler installation",
        "address": "12 Elm St, Springfield, 01101",
        "amount_minor": 480000,
        "currency": "USD",
        "scheduled_for": None,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": None,
        "created_at": PAID_AT,
        "updated_at": PAID_AT,
    }
    [(channel, message)] = slack.posted
    assert channel == "#ops"
    [notice] = [n for n in p.read(p.notices) if n["template"] == "payment_received_ops"]
    assert (notice["channel"], notice["recipient"]) == ("SLACK", "#ops")
    assert message == render_slack(notice)
    assert message["text"] == (
        "Paid: *4,800.00 USD* from *Dana Ortiz* for Boiler installation. "
        "A job is waiting to be booked."
    )

    p.send(p.events, [COMPLETED])
    wait_for(lambda: store.rows("jobs")[0]["status"] == "completed", "the completed job")
    [job] = store.rows("jobs")
    assert {k: job[k] for k in ("job_id", "job_type", "status", "completed_at")} == {
        "job_id": job_id,
        "job_type": "boiler_installation",
        "status": "completed",
        "completed_at": DONE_AT,
    }
    assert (job["technician"], job["external_id"], job["updated_at"]) == (
        "tech-sam",
        "J-1",
        DONE_AT,
    )
    # What the payment said stays.
    assert (job["amount_minor"], job["service"], job["created_at"]) == (
        480000,
        "Boiler installation",
        PAID_AT,
    )

    # The survey waits for 10:00 next morning, the answer three days: move the clock on.
    wait_for(lambda: bool(p.decisions("workflow_entered")), "the job-completed workflow")
    FileClock.write(running.clock, T0 + timedelta(days=1))
    wait_for(lambda: surveyed(p), "the satisfaction survey")
    FileClock.write(running.clock, T0 + timedelta(days=5))
    wait_for(lambda: len(store.rows("jobs")) == 2, "the inspection job")
    [inspection] = [j for j in store.rows("jobs") if j["job_type"] == "inspection"]
    [task] = [t for t in store.rows("tasks") if t["title"].startswith("Follow-up inspection")]
    assert task["title"] == "Follow-up inspection for job J-1 (boiler_installation)"
    assert {k: v for k, v in inspection.items() if k not in ("job_id", "created_at")} == {
        "contact_id": contact_id,
        "job_type": "inspection",
        "status": "scheduled",
        "title": task["title"],
        "service": "inspection",
        "address": "12 Elm St, Springfield, 01101",
        "amount_minor": None,
        "currency": None,
        "scheduled_for": task["due_at"],  # due with the task: the rules' 30 days
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": job_id,
        "updated_at": inspection["created_at"],
    }
    assert task["due_at"] - inspection["created_at"] == timedelta(days=30)
    audit = [a for a in p.read(p.audit) if a["stage"] == "jobs"]
    assert [a["decision"] for a in audit] == [
        "job_created",
        "operations_notified",
        "job_updated",
        "job_scheduled",
    ]

    # The same events again: no second job, no second message.
    p.send(p.events, [QUOTE, PAID, COMPLETED])
    time.sleep(5)
    assert len(store.rows("jobs")) == 2
    assert len(slack.posted) == 1
    assert [a["decision"] for a in p.read(p.audit) if a["stage"] == "jobs"] == [
        a["decision"] for a in audit
    ]
