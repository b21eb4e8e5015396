"""Workflows on the real broker, with a file clock the test moves: two workflows of one
group triggered by the same event behave as the group declares (the higher priority
enters, the other does not, a still higher one preempts it), and a worker killed while
runs wait resumes them after the restart, sending nothing twice."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from processors.commands.explain import explain
from streams.clock import FileClock
from streams.settings import Settings
from tests.integration.test_sla_timers import T0, Pipeline, lead, with_clock
from tests.kafka_helpers import running_worker, wait_for

pytestmark = pytest.mark.integration

POLICIES = """
version: 1
timezone: UTC
"""

# Two workflows of group outreach start on the same form; a missed call outranks both.
HOT = """
name: hot-outreach
version: 1
purpose: Welcome a web lead at once and wait a day for a reply.
owner: revops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
group: outreach
priority: 20
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - id: welcome
    send: {channel: EMAIL, template: web_lead_welcome}
  - id: wait-for-reply
    wait_for: [{event: EMAIL_REPLIED, goto: replied}]
    timeout: 1d
    on_timeout: quiet
  - {id: quiet, exit: quiet}
  - {id: replied, exit: replied}
exits:
  booked: {tag: booked}
  replied: {tag: replied}
  quiet: {tag: quiet}
  preempted: {tag: outreach-preempted}
"""

NURTURE = """
name: nurture
version: 1
purpose: A slower sequence for the same leads, which must not run beside hot-outreach.
owner: marketing@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
group: outreach
priority: 10
goal: {events: [{event: MEETING_BOOKED}], exit: done}
steps:
  - id: follow-up
    send: {channel: EMAIL, template: web_lead_follow_up}
  - {id: pause, wait: 1d}
  - {id: done, exit: done}
exits:
  done: {tag: nurtured}
"""

MISSED_CALL = """
name: missed-call
version: 1
purpose: A missed call takes the contact from any outreach sequence.
owner: front-desk@example.com
trigger: {event: CALL_COMPLETED, when: {direction: INBOUND, status: no-answer}}
entry: {everyone: true}
group: outreach
priority: 30
goal: {events: [{event: MEETING_BOOKED}], exit: done}
steps:
  - id: sorry
    send: {channel: EMAIL, template: missed_call_text_back}
  - {id: pause, wait: 1d}
  - {id: done, exit: done}
exits:
  done: {tag: missed-call-handled}
"""

# One run per lead: welcome, an hour's wait, a follow-up.
DRIP = """
name: drip
version: 1
purpose: Welcome a lead, wait an hour, follow up once.
owner: revops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
goal: {events: [{event: MEETING_BOOKED}], exit: done}
steps:
  - id: welcome
    send: {channel: EMAIL, template: web_lead_welcome}
  - {id: an-hour, wait: 1h}
  - id: follow-up
    send: {channel: EMAIL, template: web_lead_follow_up}
  - {id: done, exit: done}
exits:
  done: {tag: dripped}
"""


def with_workflows(settings: Settings, tmp_path: Path, *workflows: str) -> Settings:
    directory = tmp_path / "workflows"
    directory.mkdir()
    (directory / "policies.yaml").write_text(POLICIES)
    for i, text in enumerate(workflows):
        (directory / f"w{i}.yaml").write_text(text)
    return settings.model_copy(update={"workflows": directory})


def missed_call(email: str, n: int) -> tuple[str, dict[str, Any]]:
    at = T0 + timedelta(minutes=1)
    return f"email:{email}", {
        "event_id": f"twilio:call-{n}",
        "event_type": "CALL_COMPLETED",
        "source_system": "twilio",
        "event_time": at,
        "received_time": at,
        "identity": {"email": email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "payload": {
            "call_id": f"call-{n}",
            "direction": "INBOUND",
            "status": "no-answer",
            "duration_seconds": 0,
            "from_number": None,
            "to_number": None,
            "handled_by": None,
            "outcome": None,
            "transcript_summary": None,
            "requested_service": None,
            "next_step": None,
            "recording_url": None,
        },
    }


def workflow_audit(p: Pipeline) -> list[dict[str, Any]]:
    return [a for a in p.read(p.audit) if a["stage"] == "workflow"]


def sent(p: Pipeline, template: str) -> list[dict[str, Any]]:
    return [n for n in p.read(p.notices) if n["template"] == template]


def test_two_workflows_of_a_group_on_one_event_enter_by_priority_and_a_higher_one_preempts(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, _ = with_clock(settings, tmp_path, T0)
    settings = with_workflows(settings, tmp_path, HOT, NURTURE, MISSED_CALL)
    p = Pipeline(settings, registry, tmp_path)
    with running_worker(settings, tmp_path / "worker.log"):
        p.send(p.events, [lead(1, T0)])
        wait_for(lambda: len(sent(p, "web_lead_welcome")) == 1, "hot-outreach's welcome")
        p.send(p.events, [missed_call("lead1@example.com", 1)])
        wait_for(lambda: len(sent(p, "missed_call_text_back")) == 1, "the missed-call message")
        p.send(p.events, [lead(1, T0), missed_call("lead1@example.com", 1)])  # replayed
        time.sleep(5)
        story = explain(settings, "email:lead1@example.com")
        audit = workflow_audit(p)
        welcomes = sent(p, "web_lead_welcome")
        follow_ups = sent(p, "web_lead_follow_up")
        sorry = sent(p, "missed_call_text_back")

    entered = [a["inputs"]["workflow"] for a in audit if a["decision"] == "workflow_entered"]
    assert entered == ["hot-outreach", "missed-call"]
    [refused] = [a for a in audit if a["decision"] == "workflow_not_entered"]
    assert refused["inputs"]["workflow"] == "nurture"
    assert refused["inputs"]["because"] == "group"
    assert "in hot-outreach of group outreach (priority 20 >= 10)" in refused["reason"]
    [exited] = [a for a in audit if a["decision"] == "workflow_exited"]
    assert (exited["inputs"]["workflow"], exited["inputs"]["exit"]) == (
        "hot-outreach",
        "preempted",
    )
    assert "missed-call (priority 30) of group outreach takes the contact" in exited["reason"]
    # One message per run that sent it; the nurture sequence never ran beside them.
    assert (len(welcomes), len(follow_ups), len(sorry)) == (1, 0, 1)
    # The preempted run left its declared state: the tag, written to the CRM.
    tags = [
        c["payload"]["properties"]["workflow_tags"]
        for c in p.read(p.commands)
        if c["command_type"] == "UPSERT_CONTACT" and "workflow_tags" in c["payload"]["properties"]
    ]
    assert tags == ["outreach-preempted"]
    # `switchboard explain` tells the path: where the contact is, and each decision.
    assert "  workflows: missed-call (v1 pause)" in story
    assert "  tags: outreach-preempted" in story
    assert "workflow workflow_not_entered nurture: not entered: in hot-outreach" in story
    assert "workflow workflow_exited  hot-outreach: preempted: missed-call" in story


def test_a_worker_killed_mid_wait_resumes_the_runs_and_sends_nothing_twice(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, clock = with_clock(settings, tmp_path, T0)
    settings = with_workflows(settings, tmp_path, DRIP)
    p = Pipeline(settings, registry, tmp_path)
    count = 10
    with running_worker(settings, tmp_path / "first.log") as first:
        p.send(p.events, [lead(n, T0) for n in range(count)])
        wait_for(lambda: len(sent(p, "web_lead_welcome")) == count, "every welcome")
        first.kill()  # SIGKILL with every run waiting out its hour
        first.wait()

    FileClock.write(clock, T0 + timedelta(hours=2))
    with running_worker(settings, tmp_path / "second.log"):
        wait_for(lambda: len(sent(p, "web_lead_follow_up")) == count, "every follow-up")
        time.sleep(3)  # a duplicate would show up here
        welcomes = sent(p, "web_lead_welcome")
        follow_ups = sent(p, "web_lead_follow_up")
        audit = workflow_audit(p)

    assert len({n["notification_id"] for n in welcomes}) == len(welcomes) == count
    assert len({n["notification_id"] for n in follow_ups}) == len(follow_ups) == count
    assert Counter(n["contact_id"] for n in follow_ups) == Counter(
        n["contact_id"] for n in welcomes
    )
    waited = [a for a in audit if a["decision"] == "workflow_waited"]
    assert len(waited) == count
    # Due an hour after T0, fired after two: about an hour late, recorded.
    assert all(int(a["inputs"]["lateness_ms"]) >= 59 * 60 * 1000 for a in waited)
    exits = Counter(a["inputs"]["exit"] for a in audit if a["decision"] == "workflow_exited")
    assert exits == {"done": count}
