"""SLA timers on the real broker, with a file clock that the test moves: a lead nobody
calls escalates through the chain on schedule, a call in time stops the clock, pending
timers survive a restart and move to a second worker on a rebalance, each firing once."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.clock import FileClock
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import (
    AUDIT,
    CONTACT_EVENTS,
    CRM_COMMANDS,
    NOTIFICATIONS,
    REP_ROSTER,
    ensure_topics,
)
from tests.conftest import free_port
from tests.integration.test_stateful_core import ALWAYS
from tests.kafka_helpers import get, producer, read_all, running_worker, wait_for

pytestmark = pytest.mark.integration

# A Wednesday, 10:00 in New York: inside the policy's business hours, so the wait is 5m.
T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)

POLICY = """
version: 1
business_hours: {timezone: America/New_York, start: "09:00", end: "17:30"}
policies:
  - name: first-touch
    kind: first_touch
    description: A routed lead is called within 5 minutes in business hours, 30 outside them.
    starts_on: [{event: ASSIGNED}]
    stops_on:
      - {event: REP_ACTIVITY_LOGGED, when: {activity_type: call}}
      - {event: CALL_COMPLETED, when: {direction: OUTBOUND}}
    due: {within: 5m, outside_hours: 30m}
    escalations:
      - {after: 0m, action: remind_owner}
      - {after: 10m, action: notify_manager}
      - {after: 20m, action: reassign}
      - {after: 30m, action: flag_crm}
"""

REPS: list[dict[str, Any]] = [
    {
        "rep_id": "rep-jordan",
        "name": "Jordan Lee",
        "email": "jordan@northside.example",
        "teams": ["inbound"],
        "manager_id": "rep-maria",
        **ALWAYS,
    },
    {
        "rep_id": "rep-priya",
        "name": "Priya Shah",
        "email": "priya@northside.example",
        "teams": ["inbound"],
        "manager_id": "rep-maria",
        **ALWAYS,
    },
    {
        "rep_id": "rep-maria",
        "name": "Maria Costa",
        "email": "maria@northside.example",
        "teams": ["managers"],
        **ALWAYS,
    },
]


class Pipeline:
    """The topics a test writes and reads, decoded."""

    def __init__(self, settings: Settings, registry: SchemaRegistryClient, tmp_path: Path) -> None:
        self.settings = settings
        ensure_topics(settings)
        register_catalog(registry, settings)
        self.events = AvroSerde(
            registry,
            "contact_event",
            CONTACT_EVENTS.full_name(settings),
            discriminator="event_type",
        )
        self.audit = AvroSerde(registry, "audit_entry", AUDIT.full_name(settings))
        self.commands = AvroSerde(
            registry, "crm_command", CRM_COMMANDS.full_name(settings), discriminator="command_type"
        )
        self.notices = AvroSerde(registry, "notification", NOTIFICATIONS.full_name(settings))
        roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(settings))
        self.send(roster, [(rep["rep_id"], rep) for rep in REPS])

    def send(self, serde: AvroSerde, records: list[tuple[str, dict[str, Any]]]) -> None:
        out = producer(self.settings)
        for key, record in records:
            out.produce(serde.topic, key=key.encode(), value=serde.encode(record))
        out.flush(10)

    def read(self, serde: AvroSerde) -> list[dict[str, Any]]:
        return [serde.decode(m.value()) for m in read_all(self.settings, serde.topic)]

    def decisions(self, decision: str) -> list[dict[str, Any]]:
        return [a for a in self.read(self.audit) if a["decision"] == decision]

    def sla_notices(self) -> list[dict[str, Any]]:
        return [n for n in self.read(self.notices) if n["template"].startswith("sla_")]


def with_clock(settings: Settings, tmp_path: Path, at: datetime) -> tuple[Settings, Path]:
    clock = tmp_path / "clock"
    FileClock.write(clock, at)
    policy = tmp_path / "sla.yaml"
    policy.write_text(POLICY)
    return settings.model_copy(update={"clock": f"file:{clock}", "sla_policies": policy}), clock


def lead(n: int, at: datetime) -> tuple[str, dict[str, Any]]:
    email = f"lead{n}@example.com"
    return f"email:{email}", {
        "event_id": f"typeform:lead-{n}",
        "event_type": "FORM_SUBMITTED",
        "source_system": "typeform",
        "event_time": at,
        "received_time": at,
        "identity": {"email": email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        # 15 for the form + firmographics 40: an MQL, routed at once
        "payload": {
            "form_id": "quote",
            "form_name": None,
            "page_url": None,
            "fields": {
                "first_name": f"Lead{n}",
                "title": "Owner",
                "industry": "saas",
                "company_size": "80",
                "country": "US",
            },
            "utm": {},
        },
    }


def call_logged(email: str, rep_id: str, at: datetime) -> tuple[str, dict[str, Any]]:
    return f"email:{email}", {
        "event_id": f"hubspot:call-{email}",
        "event_type": "REP_ACTIVITY_LOGGED",
        "source_system": "hubspot",
        "event_time": at,
        "received_time": at,
        "identity": {"email": email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "payload": {
            "activity_id": f"call-{email}",
            "rep_id": rep_id,
            "activity_type": "call",
            "outcome": "connected",
            "notes": None,
        },
    }


def fired_on(port: int) -> float:
    body = get(f"http://127.0.0.1:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("switchboard_timers_fired_total{")
    )


def owners(p: Pipeline) -> dict[str, str]:
    """Contact id -> the owner the router last set."""
    found: dict[str, str] = {}
    for command in p.read(p.commands):
        if command["command_type"] == "SET_OWNER":
            found[command["contact_id"]] = command["payload"]["owner_id"]
    return found


def test_an_uncalled_lead_escalates_on_schedule_and_a_call_in_time_stops_the_clock(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, clock = with_clock(settings, tmp_path, T0)
    p = Pipeline(settings, registry, tmp_path)
    with running_worker(settings, tmp_path / "worker.log"):
        time.sleep(2)  # the roster reaches the router before the leads do
        p.send(p.events, [lead(1, T0), lead(2, T0)])
        wait_for(lambda: len(p.decisions("sla_started")) == 2, "both clocks to start")
        started = {a["contact_id"]: a for a in p.decisions("sla_started")}
        assert all(
            a["inputs"]["breach_at"] == (T0 + timedelta(minutes=5)).isoformat()
            for a in started.values()
        )
        first_owner = owners(p)
        contact_of = {
            a["inputs"]["identifiers"].removeprefix("email:"): a["contact_id"]
            for a in p.decisions("contact_created")
        }
        uncalled, called = contact_of["lead1@example.com"], contact_of["lead2@example.com"]
        called_email = "lead2@example.com"
        # Lead 2's owner calls it 3 minutes in: its clock stops.
        p.send(
            p.events, [call_logged(called_email, first_owner[called], T0 + timedelta(minutes=3))]
        )
        wait_for(lambda: len(p.decisions("sla_met")) == 1, "the call to stop the clock")

        FileClock.write(clock, T0 + timedelta(minutes=4, seconds=59))
        time.sleep(3)
        assert p.sla_notices() == [], "nothing is due before the SLA runs out"

        # Each step fires when the clock reaches it, and only then.
        def steps_fired() -> int:
            return len(p.decisions("sla_breached")) + len(p.decisions("sla_escalated"))

        steps: list[tuple[datetime, str]] = []
        at = T0 + timedelta(minutes=5)
        for level, gap in ((1, 0), (2, 10), (3, 10), (4, 10)):
            at += timedelta(minutes=gap)
            FileClock.write(clock, at)
            wait_for(lambda: steps_fired() >= level, f"escalation step {level}")  # noqa: B023
            time.sleep(1)
            assert steps_fired() == level
            steps.append((at, str(level)))

        notices = p.sla_notices()
        rep_email = {r["rep_id"]: r["email"] for r in REPS}
        owner = first_owner[uncalled]
        assert [(n["template"], n["recipient"], n["contact_id"]) for n in notices] == [
            ("sla_reminder", rep_email[owner], uncalled),
            ("sla_escalation", "maria@northside.example", uncalled),
        ]
        fired = sorted(
            p.decisions("sla_breached") + p.decisions("sla_escalated"),
            key=lambda a: int(a["inputs"]["level"]),
        )
        assert [(a["inputs"]["action"], a["inputs"]["fired_at"]) for a in fired] == [
            (action, when.isoformat())
            for action, (when, _) in zip(
                ["remind_owner", "notify_manager", "reassign", "flag_crm"], steps, strict=True
            )
        ]
        # Reassigned through routing to the other rep, and flagged in the CRM.
        wait_for(lambda: owners(p)[uncalled] != owner, "the reassignment")
        flags = [
            c
            for c in p.read(p.commands)
            if c["command_type"] == "UPSERT_CONTACT"
            and c["payload"]["properties"].get("sla_breach")
        ]
        assert [(c["contact_id"], c["payload"]["properties"]["sla_breach"]) for c in flags] == [
            (uncalled, "first-touch")
        ]

        # The chain is over: a day later nothing more fires, and the called lead never fired.
        FileClock.write(clock, T0 + timedelta(days=1))
        time.sleep(3)
        assert len(p.sla_notices()) == 2
        assert {a["contact_id"] for a in fired} == {uncalled}
        assert [a["contact_id"] for a in p.decisions("sla_met")] == [called]


def assigned_leads(p: Pipeline, count: int) -> None:
    p.send(p.events, [lead(n, T0) for n in range(count)])
    wait_for(lambda: len(p.decisions("sla_started")) == count, f"{count} clocks to start")


def test_a_restarted_worker_fires_each_pending_timer_once_and_records_its_lateness(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, clock = with_clock(settings, tmp_path, T0)
    p = Pipeline(settings, registry, tmp_path)
    count = 20
    with running_worker(settings, tmp_path / "first.log") as first:
        time.sleep(2)
        assigned_leads(p, count)
        first.kill()  # SIGKILL with 20 timers pending
        first.wait()

    downtime_end = T0 + timedelta(hours=1)
    FileClock.write(clock, downtime_end)
    with running_worker(settings, tmp_path / "second.log"):
        wait_for(lambda: len(p.decisions("sla_breached")) >= count, "every pending timer to fire")
        time.sleep(3)  # a duplicate would show up here
        breached = p.decisions("sla_breached")
    assert Counter(a["contact_id"] for a in breached) == Counter(
        {cid: 1 for cid in {a["contact_id"] for a in breached}}
    )
    assert len(breached) == count
    reminders = p.sla_notices()
    assert len(reminders) == count and len({n["notification_id"] for n in reminders}) == count
    # Due at T0+5m, fired after an hour of downtime: late by about 55 minutes, recorded.
    assert all(int(a["inputs"]["lateness_ms"]) >= 55 * 60 * 1000 for a in breached)
    # The next step keeps its spacing from the late firing, so it is not due yet.
    assert p.decisions("sla_escalated") == []


def test_a_rebalance_moves_pending_timers_to_the_worker_that_takes_their_partitions(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, clock = with_clock(settings, tmp_path, T0)
    p = Pipeline(settings, registry, tmp_path)
    count = 30
    second = settings.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / "second"})
    with running_worker(settings, tmp_path / "first.log"):
        time.sleep(2)
        assigned_leads(p, count)
        with running_worker(second, tmp_path / "second.log"):
            # The second worker takes some partitions and rebuilds their timers from the
            # changelog; it is ready once that recovery is done.
            wait_for(
                lambda: b"timer schedule rebuilt" in (tmp_path / "second.log").read_bytes(),
                "the rebalance",
            )
            time.sleep(3)
            FileClock.write(clock, T0 + timedelta(minutes=6))
            wait_for(lambda: len(p.decisions("sla_breached")) >= count, "every timer to fire")
            time.sleep(3)
            by_first, by_second = fired_on(settings.web_port), fired_on(second.web_port)
    breached = p.decisions("sla_breached")
    assert len(breached) == count == len({a["contact_id"] for a in breached})
    assert by_first + by_second == count
    assert by_second > 0, "the second worker fired none: the timers did not move"
