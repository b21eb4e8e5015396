"""The caller lookup's pure parts: what a caller's card shows from a contact's state, and
which questions it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.jobs import JOB_EVENTS
from processors.jobs import decide as decide_job
from processors.lookup import caller_card, identifier_of
from processors.records.base import crm_command
from processors.records.contact import with_tasks
from processors.routing import Rep
from processors.state import MEETINGS_KEPT, ContactState, apply_event

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def event(n: int, kind: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "event_type": kind,
        "source_system": extra.pop("system", "calendly"),
        "event_time": NOW - timedelta(hours=10) + timedelta(minutes=n),
        "received_time": NOW - timedelta(hours=10) + timedelta(minutes=n),
        "identity": {"email": "ana@example.com", "phone": "+14155550132"},
        "profile": extra.pop("profile", {}),
        "payload": payload,
    }


def booked(n: int, meeting: str, starts: datetime) -> dict[str, Any]:
    payload = {"meeting_id": meeting, "starts_at": starts, "title": f"visit {meeting}"}
    return event(n, "MEETING_BOOKED", payload | {"host": "jordan", "location": "4 Mill Lane"})


def card_of(*events: dict[str, Any], reps: dict[str, Rep] | None = None) -> dict[str, Any]:
    state = ContactState(contact_id="c-1", owner_id="rep-1")
    for each in events:
        state = apply_event(state, each)
        if each["event_type"] in JOB_EVENTS:  # jobs are the job records' (processors.jobs)
            state, _ = decide_job(state, each)
    return caller_card(json.loads(state.model_dump_json()), reps or {}, NOW)


def test_the_card_shows_the_next_booking_not_a_cancelled_or_past_one() -> None:
    card = card_of(
        booked(1, "past", NOW - timedelta(days=1)),
        booked(2, "cancelled", NOW + timedelta(hours=2)),
        event(3, "MEETING_CANCELLED", {"meeting_id": "cancelled"}),
        booked(4, "later", NOW + timedelta(days=3)),
        booked(5, "next", NOW + timedelta(days=1)),
        event(6, "JOB_STATUS_CHANGED", job("j1", "completed", NOW - timedelta(hours=9))),
        event(7, "JOB_STATUS_CHANGED", job("j2", "scheduled", NOW + timedelta(hours=20))),
    )
    assert card["next_booking"]["ref"] == "j2"
    assert card["next_booking"]["kind"] == "job"
    assert card["next_booking"]["who"] == "Sam"
    statuses = {b["ref"]: b["status"] for b in card["recent_bookings"]}
    assert statuses["cancelled"] == "cancelled"
    assert statuses["j1"] == "completed"
    assert statuses["next"] == "scheduled"


def job(job_id: str, status: str, scheduled: datetime) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_type": "install",
        "status": status,
        "technician": "Sam",
        "scheduled_for": scheduled,
    }


def test_a_contact_keeps_only_its_newest_meetings() -> None:
    events = [booked(n, f"m{n}", NOW + timedelta(days=n)) for n in range(MEETINGS_KEPT + 5)]
    state = ContactState(contact_id="c-1")
    for each in events:
        state = apply_event(state, each)
    assert len(state.meetings) == MEETINGS_KEPT
    assert "m0" not in state.meetings


def test_the_owner_shows_whether_they_can_take_the_call_now() -> None:
    working = Rep(rep_id="rep-1", name="Jordan Lee", email="j@x.example")
    assert card_of(reps={"rep-1": working})["owner"] == {
        "rep_id": "rep-1",
        "name": "Jordan Lee",
        "email": "j@x.example",
        "available_now": True,
        "availability": "working now",
    }
    away = working.model_copy(update={"out_of_office": True})
    owner = card_of(reps={"rep-1": away})["owner"]
    assert (owner["available_now"], owner["availability"]) == (False, "out of office")
    assert card_of()["owner"]["available_now"] is None  # not on the roster


def test_the_last_call_and_the_details_the_caller_gave_are_on_the_card() -> None:
    call = {
        "call_id": "call-1",
        "direction": "INBOUND",
        "status": "completed",
        "outcome": "qualified",
        "transcript_summary": "wants a quote",
        "handled_by": "Riley",
    }
    corrected = event(
        2,
        "DETAILS_CORRECTED",
        {"fields": ["address"]},
        system="vapi",
        profile={"address": {"value": "4 Mill Lane", "origin": "self"}},
    )
    card = card_of(event(1, "CALL_COMPLETED", call, system="vapi"), corrected)
    assert card["last_call"]["summary"] == "wants a quote"
    assert card["last_call"]["direction"] == "inbound"
    assert card["address"] == "4 Mill Lane"


@pytest.mark.parametrize(
    ("params", "identifier"),
    [
        ({"phone": "+14155550132"}, "phone:+14155550132"),
        ({"email": " Ana@Example.COM "}, "email:ana@example.com"),
    ],
)
def test_a_lookup_asks_for_one_normalised_identifier(
    params: dict[str, str], identifier: str
) -> None:
    assert identifier_of(params) == identifier


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "exactly one"),
        ({"phone": "+14155550132", "email": "a@b.c"}, "exactly one"),
        ({"phone": "4155550132"}, "parameter phone"),
        ({"email": "not an address"}, "parameter email"),
        ({"name": "Ana"}, "unknown parameter 'name'"),
    ],
)
def test_a_bad_lookup_is_refused_naming_what_is_wrong(params: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        identifier_of(params)


def test_every_task_made_for_the_owner_is_remembered_once_for_the_card() -> None:
    state = ContactState(contact_id="c-1", owner_id="rep-1")
    due = NOW + timedelta(days=1)
    payload = {"task_id": "t-workflow", "title": "Follow up the quote", "due_at": due}
    made = [
        crm_command("c-1", "CREATE_TASK", "t-workflow", payload, NOW, "e1"),
        crm_command("c-1", "ADD_NOTE", "n-1", {"note_id": "n-1", "body": "hi"}, NOW, "e1"),
        ("audit", "c-1", {"decision": "task_created"}),
    ]
    remembered = with_tasks(with_tasks(state, made), made)  # a redelivery adds nothing
    assert [(t.task_id, t.title, t.due_at) for t in remembered.tasks] == [
        ("t-workflow", "Follow up the quote", due)
    ]
    assert with_tasks(state, made[1:]) is state
    card = caller_card(json.loads(remembered.model_dump_json()), {}, NOW)
    assert [t["title"] for t in card["open_tasks"]] == ["Follow up the quote"]
