"""The stateful core on the real broker: one person arriving by phone, by a form and by
the CRM's change feed becomes one contact with the right score; replaying the same
input changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sinks.crm.sql import open_store
from processors.state import ContactState, Deal
from streams.clock import FileClock
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import (
    AUDIT,
    CONTACT_EVENTS,
    CONTACT_MERGES,
    CRM_COMMANDS,
    NOTIFICATIONS,
    REP_ROSTER,
    ensure_topics,
)
from tests.kafka_helpers import (
    producer,
    read_all,
    running_worker,
    settings_env,
    wait_for,
    worker_metric,
)
from tests.records import crm_command

pytestmark = pytest.mark.integration

# A Wednesday, 10:00 in New York (the workflows' default clock): outside quiet hours, so
# the workflows' first messages go out at once, whenever the test runs.
T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
PHONE, EMAIL = "+14155550132", "ana.silva@example.com"


def canonical(
    event_id: str,
    event_type: str,
    minute: int,
    identity: dict[str, Any],
    payload: dict[str, Any],
    system: str,
) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minute)
    return {
        "event_id": event_id,
        "event_type": event_type,
        "source_system": system,
        "event_time": at,
        "received_time": at,
        "contact_id": None,
        "identity": {"email": None, "phone": None, "crm_id": None, "external_ids": {}} | identity,
        "payload": payload,
    }


ALWAYS = {
    "work_start": "00:00",
    "work_end": "23:59",
    "work_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
}
REPS: list[dict[str, Any]] = [
    {
        "rep_id": "rep-jordan",
        "name": "Jordan Lee",
        "email": "jordan@northside.example",
        "teams": ["inbound"],
        "timezone": "America/New_York",
        **ALWAYS,
    },
    {
        "rep_id": "rep-priya",
        "name": "Priya Shah",
        "email": "priya@northside.example",
        "teams": ["inbound"],
        "timezone": "Europe/Lisbon",
        **ALWAYS,
    },
    {
        "rep_id": "rep-ed",
        "name": "Ed Moss",
        "email": "ed@northside.example",
        "teams": ["emea"],
        "timezone": "Europe/London",
        **ALWAYS,
    },
]

STORY = [
    (
        b"phone:" + PHONE.encode(),
        canonical(
            "vapi:call-1",
            "CALL_COMPLETED",
            0,
            {"phone": PHONE, "external_ids": {"vapi": "call-1"}},
            {
                "call_id": "call-1",
                "direction": "INBOUND",
                "status": "completed",
                "duration_seconds": 240,
                "outcome": "qualified",
            },
            "vapi",
        ),
    ),
    (
        b"email:" + EMAIL.encode(),
        canonical(
            "typeform:resp-1",
            "FORM_SUBMITTED",
            1,
            {"email": EMAIL, "phone": PHONE},
            {"form_id": "quote", "fields": {"service": "boiler"}},
            "typeform",
        ),
    ),
    (
        b"crm:4501",
        canonical(
            "hubspot:901",
            "CONTACT_UPDATED",
            2,
            {"crm_id": "4501", "email": EMAIL},
            {
                "properties": {
                    "title": "Owner",
                    "industry": "saas",
                    "company_size": "80",
                    "country": "US",
                    "lifecyclestage": "lead",
                }
            },
            "hubspot",
        ),
    ),
]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def live_contacts(settings: Settings) -> dict[str, ContactState]:
    """The contacts table as its changelog holds it (latest value per key; None = deleted)."""
    topic = f"{settings.app_id}-contacts-changelog"
    latest: dict[str, bytes | None] = {}
    for message in read_all(settings, topic):
        latest[json.loads(message.key() or b"null")] = message.value()
    return {
        key: ContactState.model_validate_json(json.loads(value))
        for key, value in latest.items()
        if value is not None
    }


def send(settings: Settings, serde: AvroSerde, story: list[tuple[bytes, dict[str, Any]]]) -> None:
    out = producer(settings)
    for key, event in story:
        out.produce(serde.topic, key=key, value=serde.encode(event))
        out.flush(10)  # one at a time: the story's order across keys matters here


def story_topics(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path, store: str = "memory://"
) -> tuple[Settings, AvroSerde, AvroSerde, AvroSerde]:
    """Settings whose clock stands still at the story's start (no SLA clock runs out while
    the test looks), the topics made, and the serdes of events, audit entries and CRM
    commands."""
    clock = tmp_path / "clock"
    FileClock.write(clock, T0)
    settings = settings.model_copy(update={"store": store, "clock": f"file:{clock}"})
    ensure_topics(settings)
    register_catalog(registry, settings)
    events = AvroSerde(
        registry, "contact_event", CONTACT_EVENTS.full_name(settings), discriminator="event_type"
    )
    audit = AvroSerde(registry, "audit_entry", AUDIT.full_name(settings))
    commands = AvroSerde(
        registry, "crm_command", CRM_COMMANDS.full_name(settings), discriminator="command_type"
    )
    return settings, events, audit, commands


def send_in_turn(
    settings: Settings, serde: AvroSerde, story: list[tuple[bytes, dict[str, Any]]]
) -> None:
    """The story's events as they happen, minutes apart: each once the worker took the last
    (sent at once, they could be taken in any order across partitions)."""

    def took(count: float) -> bool:
        return worker_metric(settings, "switchboard_events_total{") >= count

    before = worker_metric(settings, "switchboard_events_total{")
    for n, told in enumerate(story, start=1):
        send(settings, serde, [told])
        wait_for(partial(took, before + n), f"the worker to take event {n} of the story")


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_a_multi_source_story_ends_as_one_scored_contact_and_replay_changes_nothing(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path, store: str
) -> None:
    """With the in-memory store and with RocksDB (rocksdict), as production runs."""
    settings, events, audit, commands = story_topics(settings, registry, tmp_path, store)
    roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(settings))
    send(settings, roster, [(rep["rep_id"].encode(), rep) for rep in REPS])

    with running_worker(settings, tmp_path / "worker.log"):
        time.sleep(2)  # the roster reaches the router before the first lead does
        send_in_turn(settings, events, STORY)

        def settled() -> bool:
            contacts = list(live_contacts(settings).values())
            return (
                len(contacts) == 1
                and len(contacts[0].recent_event_ids) == 3
                and contacts[0].owner_id is not None
            )

        wait_for(settled, "the story to settle in one assigned contact")
        notices = AvroSerde(registry, "notification", NOTIFICATIONS.full_name(settings))
        wait_for(lambda: len(read_all(settings, notices.topic)) >= 3, "three notifications")
        [contact] = live_contacts(settings).values()
        assert set(contact.identifiers) == {
            f"phone:{PHONE}",
            f"email:{EMAIL}",
            "crm:4501",
            "ext:vapi:call-1",
        }
        # inbound call 20 + qualified 15 + form 15 (decayed by minutes) + firmographics 40
        assert contact.score == pytest.approx(90, abs=0.1)
        assert contact.band == "SQL"
        assert contact.profile["title"] == "Owner"
        assert contact.lifecycle_stage == "lead"

        decisions = [audit.decode(m.value()) for m in read_all(settings, audit.topic)]
        # The form came keyed by an e-mail nobody had, and the CRM record by a CRM id, but
        # each carried an identifier the worker had just resolved (the phone, then the
        # e-mail): both joined the caller's contact at once, with no duplicate contact
        # for a merge to retire (test_a_crm_record_that_proves_two_contacts_one_person_
        # merges_them has one).
        assert [d["decision"] for d in decisions if d["decision"] == "contact_created"] == [
            "contact_created"
        ]
        assert [d for d in decisions if d["decision"] == "merged"] == []
        upserts = [commands.decode(m.value()) for m in read_all(settings, commands.topic)]
        kinds = Counter(u["command_type"] for u in upserts)
        assert kinds["UPSERT_CONTACT"] >= 1
        owners = [u for u in upserts if u["command_type"] == "SET_OWNER"]
        [set_owner] = [o for o in owners if not o["payload"]["reason"].startswith("kept from")]
        assert set_owner["payload"]["owner_id"] == contact.owner_id
        assert set_owner["payload"]["reason"].startswith("inbound: rule inbound")

        [assigned] = [d for d in decisions if d["decision"] == "assigned"]
        assert assigned["stage"] == "routing"
        assert assigned["inputs"]["rule"] == "inbound"
        assert assigned["inputs"]["considered"] == "rep-jordan,rep-priya"

        sent = [notices.decode(m.value()) for m in read_all(settings, notices.topic)]
        rep = next(r for r in REPS if r["rep_id"] == contact.owner_id)
        # The call enrolled the caller in the booking-link sequence and the form in the
        # web-lead one; each sent its first message. The rep was briefed once.
        by_template = {n["template"]: n for n in sent}
        assert sorted((n["template"], n["channel"], n["recipient"]) for n in sent) == [
            ("booking_link", "SMS", PHONE),
            ("new_lead", "EMAIL", rep["email"]),
            ("web_lead_welcome", "EMAIL", EMAIL),
        ]
        notice = by_template["new_lead"]
        # The CRM record crossed the routing band in the caller's contact: the rep is
        # briefed with the call and the form behind it.
        assert notice["context"]["recommended_action"] == "call back within 5 minutes"
        assert "score" in notice["context"]["why_now"]

        explained = run_cli(settings, "explain", f"email:{EMAIL}")
        assert explained.returncode == 0, explained.stderr
        text = explained.stdout
        assert text.startswith(f"Contact {contact.contact_id}\n")
        assert "score: 90 (SQL)" in text or "score: 89.99 (SQL)" in text
        assert f"owner: {contact.owner_id} (routing: assigned)" in text
        for decision in ("contact_created", "score_changed", "assigned"):
            assert f" {decision} " in text, decision

        before = (live_contacts(settings), len(decisions), len(upserts), len(sent))
        processed = worker_metric(settings, "switchboard_events_total{")
        send(settings, events, STORY)  # a replay of the same input
        wait_for(
            lambda: worker_metric(settings, "switchboard_events_total{") >= processed + 3,
            "the replay to be processed",
        )
        time.sleep(3)  # the contact stage runs behind the identity stage
        after = (
            live_contacts(settings),
            len(read_all(settings, audit.topic)),
            len(read_all(settings, commands.topic)),
            len(read_all(settings, notices.topic)),
        )
        assert after == before


def test_a_crm_record_that_proves_two_contacts_one_person_merges_them(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """A caller, and a form with only an e-mail, are two contacts until the CRM's record
    names both the e-mail and the phone: then they merge into one, and the CRM is told."""
    settings, events, audit, commands = story_topics(settings, registry, tmp_path)
    call, (form_key, form), (crm_key, crm) = STORY
    form_alone = (form_key, {**form, "identity": {**form["identity"], "phone": None}})
    crm_both = (crm_key, {**crm, "identity": {**crm["identity"], "phone": PHONE}})
    everything = {f"phone:{PHONE}", f"email:{EMAIL}", "crm:4501", "ext:vapi:call-1"}

    with running_worker(settings, tmp_path / "worker.log"):
        send_in_turn(settings, events, [call, form_alone])
        wait_for(lambda: len(live_contacts(settings)) == 2, "a contact for each")
        send_in_turn(settings, events, [crm_both])

        def merged() -> bool:
            contacts = list(live_contacts(settings).values())
            return len(contacts) == 1 and set(contacts[0].identifiers) == everything

        wait_for(merged, "the two contacts to merge into one")
        [contact] = live_contacts(settings).values()
        decisions = [audit.decode(m.value()) for m in read_all(settings, audit.topic)]
        [merge] = [d for d in decisions if d["decision"] == "merged"]
        assert merge["contact_id"] == contact.contact_id
        retired = merge["inputs"]["retired"]
        assert retired != contact.contact_id
        sent = [commands.decode(m.value()) for m in read_all(settings, commands.topic)]
        [told] = [c for c in sent if c["command_type"] == "MERGE_CONTACTS"]
        assert told["contact_id"] == contact.contact_id
        assert told["payload"]["retired_contact_id"] == retired
        assert told["payload"]["identifier"] == f"phone:{PHONE}"


def merge_topics(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> tuple[Settings, AvroSerde, AvroSerde]:
    """Settings whose clock stands at T0, the topics made, and the serdes of the merge
    steps the test sends and the CRM commands it reads."""
    clock = tmp_path / "clock"
    FileClock.write(clock, T0)
    settings = settings.model_copy(update={"clock": f"file:{clock}"})
    ensure_topics(settings)
    register_catalog(registry, settings)
    merges = AvroSerde(registry, "contact_merge", CONTACT_MERGES.full_name(settings))
    commands = AvroSerde(
        registry, "crm_command", CRM_COMMANDS.full_name(settings), discriminator="command_type"
    )
    return settings, merges, commands


def transfer_step(retired: ContactState) -> dict[str, Any]:
    """The TRANSFER merge step that hands ``retired`` (c-retired) to c-survivor."""
    return {
        "step": "TRANSFER",
        "target": "c-survivor",
        "other": "c-retired",
        "identifier": f"phone:{PHONE}",
        "state": retired.model_dump_json(),
        "timers": None,
        "workflows": None,
        "at": T0,
    }


def test_a_merge_that_reaches_the_survivor_before_its_first_event_creates_it_in_the_crm(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """A merge's TRANSFER and the survivor's own first event come by different topics, so
    the TRANSFER can come first. No event then creates the survivor, yet the CRM must hear
    of it: the merged state is upserted, caused by the merge."""
    settings, merges, commands = merge_topics(settings, registry, tmp_path)
    retired = ContactState(
        contact_id="c-retired",
        identifiers=[f"email:{EMAIL}", "ext:vapi:call-7"],
        profile={"first_name": "Ana", "last_name": "Silva"},
        recent_event_ids=["vapi:call-7"],
        first_seen=T0,
        last_event_time=T0,
    )
    transfer = transfer_step(retired)

    with running_worker(settings, tmp_path / "worker.log"):
        send(settings, merges, [(b"c-survivor", transfer)])
        wait_for(lambda: "c-survivor" in live_contacts(settings), "the survivor's state")
        survivor = live_contacts(settings)["c-survivor"]
        assert survivor.identifiers == retired.identifiers
        assert survivor.recent_event_ids == ["vapi:call-7"]
        wait_for(lambda: len(read_all(settings, commands.topic)) > 1, "two CRM commands")
        merge, upsert = [commands.decode(m.value()) for m in read_all(settings, commands.topic)]
        # The CRM first moves the retired contact's records, then shows the merged profile.
        assert merge["command_type"] == "MERGE_CONTACTS"
        assert merge["contact_id"] == "c-survivor"
        assert merge["payload"]["retired_contact_id"] == "c-retired"
        assert merge["payload"]["identifier"] == f"phone:{PHONE}"
        assert upsert["command_type"] == "UPSERT_CONTACT"
        assert upsert["contact_id"] == "c-survivor"
        assert upsert["causation_event_id"] == "merged:c-retired"
        assert upsert["payload"]["email"] == EMAIL
        assert upsert["payload"]["first_name"] == "Ana"


def test_a_merge_makes_the_adopted_deal_again_so_the_survivors_stage_change_finds_it(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """The retired contact's CREATE_DEAL went out keyed by it, on another partition than
    the survivor's later UPDATE_DEAL_STAGE, so the CRM sink may apply that update first
    (issue 19: dead-lettered, the deal's stage left wrong). The TRANSFER makes the deal
    again under the survivor, in the survivor's own order. Applied to the SQL CRM store in
    the worst order (the survivor's commands and its stage change, then the retired
    contact's create), the deal ends where the survivor moved it."""
    settings, merges, commands = merge_topics(settings, registry, tmp_path)
    name = "Ana Silva \u2014 meeting-booked"
    deal = Deal(deal_id="d-1", name=name, stage="appointmentscheduled", updated_at=T0)
    retired = ContactState(
        contact_id="c-retired",
        identifiers=[f"email:{EMAIL}"],
        profile={"first_name": "Ana", "last_name": "Silva"},
        open_deals={"d-1": deal},
        first_seen=T0,
        last_event_time=T0,
    )
    transfer = transfer_step(retired)

    with running_worker(settings, tmp_path / "worker.log"):
        send(settings, merges, [(b"c-survivor", transfer)])
        wait_for(lambda: len(read_all(settings, commands.topic)) > 2, "three CRM commands")
        sent = [commands.decode(m.value()) for m in read_all(settings, commands.topic)]
    assert [(c["command_type"], c["contact_id"]) for c in sent] == [
        ("MERGE_CONTACTS", "c-survivor"),
        ("UPSERT_CONTACT", "c-survivor"),
        ("CREATE_DEAL", "c-survivor"),
    ]
    payload = {
        "deal_id": "d-1",
        "name": name,
        "stage": "appointmentscheduled",
        "pipeline": None,
        "amount_minor": None,
        "currency": None,
    }
    assert sent[2]["payload"] == payload
    assert live_contacts(settings)["c-survivor"].open_deals["d-1"].name == name

    # The retired contact's own create, from before the merge, and the survivor's move.
    created = crm_command("CREATE_DEAL", "c-retired", payload, "a-create", T0)
    move = {"deal_id": "d-1", "stage": "contractsent", "previous_stage": "appointmentscheduled"}
    moved = crm_command("UPDATE_DEAL_STAGE", "c-survivor", move, "b-move", T0 + timedelta(hours=1))
    store = open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    try:
        for record in [*sent, moved, created]:
            assert asyncio.run(store.deliver([record])) == [None], record["command_id"]
        [row] = store.rows("deals")
    finally:
        asyncio.run(store.close())
    assert (row["contact_id"], row["name"], row["stage"]) == ("c-survivor", name, "contractsent")
    assert row["stage_changed_at"] == T0 + timedelta(hours=1)
