"""Pipeline triggers on the real broker: a payment closes the deal won and a completed job
creates its invoice task, each once, even when the same events arrive again. The worker
runs no workflows here (they have their own tests), so what it sends is the pipeline's."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.settings import Settings
from tests.integration.test_sla_timers import T0, Pipeline, with_clock
from tests.integration.test_workflows import with_workflows
from tests.kafka_helpers import running_worker, wait_for

pytestmark = pytest.mark.integration

EMAIL, CRM_ID = "dana.ortiz@example.com", "7701"


def event(
    event_id: str, kind: str, minute: int, payload: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    at = T0 + timedelta(minutes=minute)
    return f"email:{EMAIL}", {
        "event_id": event_id,
        "event_type": kind,
        "source_system": "test",
        "event_time": at,
        "received_time": at,
        "identity": {"email": EMAIL, "phone": "+14155550177", "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "payload": payload,
    }


STORY = [
    event(
        "hubspot:deal-1",
        "DEAL_STAGE_CHANGED",
        0,
        {
            "deal_id": "D-1",
            "stage": "proposalsent",
            "previous_stage": None,
            "pipeline": "default",
            "amount_minor": 480000,
            "currency": "usd",
        },
    ),
    event(
        "stripe:evt-1",
        "PAYMENT_RECEIVED",
        5,
        {
            "payment_id": "pi_1",
            "amount_minor": 480000,
            "currency": "usd",
            "method": "card",
            "invoice_id": "in_1",
        },
    ),
    event(
        "jobs:job-1-completed",
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
    ),
]


def test_payment_closes_the_deal_won_and_a_completed_job_is_invoiced_once(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, _ = with_clock(settings, tmp_path, T0)
    settings = with_workflows(settings, tmp_path)
    p = Pipeline(settings, registry, tmp_path)
    with running_worker(settings, tmp_path / "worker.log"):
        p.send(p.events, STORY)
        wait_for(lambda: len(p.decisions("task_created")) == 1, "the job's invoice task")
        p.send(p.events, STORY)  # the same events again: nothing new
        time.sleep(5)
        commands = [c for c in p.read(p.commands) if c["command_type"] != "UPSERT_CONTACT"]
        notices = p.read(p.notices)
        decisions = Counter(a["decision"] for a in p.read(p.audit) if a["stage"] == "pipeline")

    [won] = [c for c in commands if c["command_type"] == "UPDATE_DEAL_STAGE"]
    assert won["payload"] == {
        "deal_id": "D-1",
        "stage": "closedwon",
        "previous_stage": "proposalsent",
        "amount_minor": 480000,  # the payment's
        "currency": "USD",
    }
    assert won["causation_event_id"] == "stripe:evt-1"
    tasks = sorted(c["payload"]["title"] for c in commands if c["command_type"] == "CREATE_TASK")
    assert tasks == ["Invoice job J-1 (boiler_installation)"]
    assert Counter(c["command_type"] for c in commands) == {
        "UPDATE_DEAL_STAGE": 1,
        "CREATE_TASK": 1,
        "LOG_ACTIVITY": 1,  # the payment, on the contact's timeline (once, despite the replay)
        "UPSERT_JOB": 2,  # the payment's job, then that job completed
    }
    # The survey is the job-completed workflow's, which does not run here.
    assert [n for n in notices if n["template"] == "satisfaction_survey"] == []
    assert decisions == {"deal_moved": 1, "task_created": 1}
