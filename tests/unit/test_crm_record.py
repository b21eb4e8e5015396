"""The pure parts of a whole CRM record (issue 18): which source's word the profile keeps,
what each event logs on the contact's timeline, the call's next-step task, and how a
message greets a person whose name is unknown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.sinks.notify.templates import render_sms, render_text
from processors.identity import merge_states
from processors.records.contact import merge_outputs, upsert_contact
from processors.records.timeline import activity, activity_outputs, next_step, next_step_outputs
from processors.state import ContactState, Deal, apply_event

T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


def event(
    event_type: str,
    payload: dict[str, Any],
    profile: dict[str, tuple[str, str]] | None = None,
    n: int = 1,
) -> dict[str, Any]:
    return {
        "event_id": f"src:{event_type.lower()}-{n}",
        "event_type": event_type,
        "source_system": "src",
        "event_time": T0 + timedelta(minutes=n),
        "received_time": T0 + timedelta(minutes=n),
        "identity": {"email": None, "phone": "+14155550177", "crm_id": None, "external_ids": {}},
        "contact_id": "c-1",
        "profile": {k: {"value": v, "origin": o} for k, (v, o) in (profile or {}).items()},
        "payload": payload,
    }


def call(n: int = 1, **fields: Any) -> dict[str, Any]:
    payload = {
        "call_id": f"call-{n}",
        "direction": "INBOUND",
        "status": "completed",
        "duration_seconds": 247,
        "from_number": "+14155550177",
        "to_number": "+14155550100",
        "handled_by": "Riley",
        "outcome": None,
        "transcript_summary": None,
        "requested_service": None,
        "next_step": None,
        "recording_url": None,
    }
    return event("CALL_COMPLETED", payload | fields, n=n)


def form(n: int, **fields: str) -> dict[str, Any]:
    payload = {"form_id": "quote", "form_name": "Quote", "page_url": None, "fields": fields}
    return event("FORM_SUBMITTED", payload | {"utm": {}}, n=n)


def test_a_persons_own_answer_beats_a_caller_id_name_whatever_the_order() -> None:
    caller_id = call(1)
    caller_id["profile"] = {"first_name": {"value": "WHITFIELD", "origin": "caller_id"}}
    answered = form(2, first_name="Dana", last_name="Whitfield")
    for order in ([caller_id, answered], [answered, caller_id]):
        state = ContactState(contact_id="c-1")
        for e in order:
            state = apply_event(state, e)
        assert (state.profile["first_name"], state.profile["last_name"]) == ("Dana", "Whitfield")
        assert state.profile_origin["first_name"] == "self"


def test_a_later_answer_of_the_same_standing_wins_and_a_crm_edit_corrects_a_form() -> None:
    state = apply_event(ContactState(contact_id="c-1"), form(1, company="Whitfeld Bakery"))
    state = apply_event(state, form(2, company="Whitfield Bakery"))
    assert state.profile["company"] == "Whitfield Bakery"
    edit = event("CONTACT_UPDATED", {"properties": {"company": "Whitfield Bakery Ltd"}}, n=3)
    state = apply_event(state, edit)
    assert state.profile["company"] == "Whitfield Bakery Ltd"
    billing = event("INVOICE_PAID", {}, {"company": ("Whitfield Holdings", "billing")}, n=4)
    assert apply_event(state, billing).profile["company"] == "Whitfield Bakery Ltd"


def test_a_merge_keeps_each_fields_better_origin() -> None:
    survivor = ContactState(
        contact_id="c-a",
        profile={"first_name": "WHITFIELD", "postcode": "94110"},
        profile_origin={"first_name": "caller_id", "postcode": "self"},
    )
    retired = ContactState(
        contact_id="c-b",
        profile={"first_name": "Dana", "postcode": "94103"},
        profile_origin={"first_name": "self", "postcode": "self"},
    )
    merged = merge_states(survivor, retired)
    assert merged.profile == {"first_name": "Dana", "postcode": "94110"}  # a tie: the survivor's


def test_the_upsert_carries_what_the_crm_shows_of_the_profile() -> None:
    said = {
        "first_name": ("Dana", "voice_ai"),
        "service": ("boiler replacement", "voice_ai"),
        "qualification": ("qualified", "voice_ai"),
        "timezone": ("America/New_York", "self"),
    }
    state = apply_event(ContactState(contact_id="c-1"), event("X", {}, said))
    payload = upsert_contact(state, "cmd", None, T0)["payload"]
    assert payload["first_name"] == "Dana"
    assert payload["properties"] == {
        "lead_score": "0",
        "service": "boiler replacement",
        "qualification": "qualified",
        "timezone": "America/New_York",
    }


def test_a_voice_ai_call_is_logged_and_its_next_step_is_the_owners_task() -> None:
    ai = call(
        outcome="qualified",
        transcript_summary="Boiler failed; wants a quote.",
        requested_service="boiler replacement",
        next_step="Bring a quote",
        recording_url="https://storage.vapi.ai/r.wav",
    )
    state = ContactState(contact_id="c-1", owner_id="rep-7", profile={"first_name": "Dana"})
    [log] = activity_outputs(state, ai)
    step = next_step(state, ai)
    assert step is not None
    [task, audit] = next_step_outputs("c-1", step, state.owner_id)
    assert log[2]["command_type"] == "LOG_ACTIVITY"
    logged = log[2]["payload"]
    assert logged["title"] == "Inbound call (completed, 4m 07s)"
    assert (logged["direction"], logged["status"], logged["outcome"]) == (
        "inbound",
        "completed",
        "qualified",
    )
    assert logged["summary"] == (
        "Summary: Boiler failed; wants a quote.\n"
        "Service requested: boiler replacement\n"
        "Next step: Bring a quote"
    )
    assert (logged["handled_by"], logged["recording_url"]) == (
        "Riley",
        "https://storage.vapi.ai/r.wav",
    )
    created = task[2]["payload"]
    assert (created["owner_id"], created["priority"]) == ("rep-7", "HIGH")
    assert created["title"] == "Bring a quote \u2014 Dana"
    assert created["due_at"] == ai["event_time"] + timedelta(hours=1)
    assert "Summary: Boiler failed; wants a quote." in created["notes"]
    assert audit[0] == "audit"
    # The same event decides the same ids: a replay is recognised by the sinks.
    assert activity_outputs(state, ai) == [log]
    assert next_step_outputs("c-1", step, "rep-7") == [task, audit]


def test_a_call_without_a_next_step_makes_no_task_and_opens_are_not_activities() -> None:
    assert next_step(ContactState(contact_id="c-1"), call()) is None
    assert activity(event("EMAIL_OPENED", {"message_id": "m", "user_agent": None})) is None


def test_payments_forms_and_meetings_are_logged() -> None:
    paid = event(
        "PAYMENT_RECEIVED",
        {
            "payment_id": "pi_1",
            "amount_minor": 480000,
            "currency": "usd",
            "method": "card",
            "invoice_id": None,
        },
    )
    logged = activity(paid)
    assert logged is not None
    assert (logged["activity_type"], logged["title"]) == (
        "payment",
        "Payment received: 4,800.00 USD",
    )
    answered = activity(form(2, service="boiler", postcode="94110"))
    assert answered is not None
    assert answered["activity_type"] == "form"
    assert answered["summary"] == "postcode: 94110\nservice: boiler"
    booked = {
        "meeting_id": "m-1",
        "starts_at": T0,
        "ends_at": None,
        "title": "Site visit",
        "host": "rep@x.example",
        "location": None,
    }
    meeting = activity(event("MEETING_BOOKED", booked))
    assert meeting is not None
    assert meeting["summary"] == "Starts: 2026-11-18 15:00 UTC\nHost: rep@x.example"


def test_nobody_is_greeted_by_an_address_or_a_blank() -> None:
    state = ContactState(contact_id="c-1", identifiers=["email:dana@example.com"])
    assert state.greeting_name() == "there"
    for name in ("dana@example.com", "", "+14155550177"):
        record = {
            "template": "onboarding_welcome",
            "channel": "EMAIL",
            "context": {"first_name": name, "who": "x", "company": ""},
        }
        assert render_text(record)[1].startswith("Hi there,")
        assert render_sms(record).startswith("Hi there,")
    named = {"template": "onboarding_welcome", "context": {"first_name": "Dana"}}
    assert render_text(named)[1].startswith("Hi Dana,")


def test_a_merge_tells_the_crm_the_merge_the_owner_it_kept_and_the_merged_profile() -> None:
    survivor = ContactState(contact_id="c-a", profile={"first_name": "Dana"})
    retired = ContactState(contact_id="c-b", owner_id="rep-7")
    merged = merge_states(survivor, retired)
    outputs = merge_outputs(survivor, merged, "c-b", "phone:+14155550177", T0)
    kinds = [(o[0], o[1], o[2]["command_type"]) for o in outputs]
    assert kinds == [
        ("commands", "c-a", "MERGE_CONTACTS"),
        ("commands", "c-a", "SET_OWNER"),
        ("commands", "c-a", "UPSERT_CONTACT"),
    ]
    assert outputs[0][2]["payload"] == {
        "retired_contact_id": "c-b",
        "identifier": "phone:+14155550177",
    }
    assert outputs[1][2]["payload"]["owner_id"] == "rep-7"
    assert outputs[2][2]["payload"]["first_name"] == "Dana"
    # The survivor had the owner already: nothing to tell.
    owned = survivor.model_copy(update={"owner_id": "rep-7"})
    again = merge_outputs(owned, merge_states(owned, retired), "c-b", "phone:x", T0)
    assert [o[2]["command_type"] for o in again] == ["MERGE_CONTACTS", "UPSERT_CONTACT"]


def test_a_merge_makes_each_adopted_open_deal_again_under_the_survivor() -> None:
    """The retired contact's CREATE_DEAL went out on its own partition, with no order
    against the survivor's later stage changes: the survivor issues the deal's create in
    its own order, with the deal's values now, after the profile (HubSpot ties a deal to a
    contact that must exist)."""
    booked = Deal(
        deal_id="d-b",
        name="Silva Lda \u2014 meeting-booked",
        stage="contractsent",
        updated_at=T0,
        amount_minor=129_950,
        currency="EUR",
    )
    from_crm = Deal(deal_id="900123", stage="qualifiedtobuy", updated_at=T0)  # the CRM's own
    mine = Deal(deal_id="d-a", name="Dana \u2014 call", stage="new", updated_at=T0)
    survivor = ContactState(contact_id="c-a", open_deals={"d-a": mine})
    retired = ContactState(contact_id="c-b", open_deals={"d-b": booked, "900123": from_crm})
    merged = merge_states(survivor, retired)
    outputs = merge_outputs(survivor, merged, "c-b", "phone:x", T0, adopted=retired.open_deals)

    kinds = [(o[0], o[1], o[2]["command_type"]) for o in outputs]
    assert kinds == [
        ("commands", "c-a", "MERGE_CONTACTS"),
        ("commands", "c-a", "UPSERT_CONTACT"),
        ("commands", "c-a", "CREATE_DEAL"),
    ]
    create = outputs[2][2]
    assert create["contact_id"] == "c-a" and create["causation_event_id"] is None
    assert create["payload"] == {
        "deal_id": "d-b",
        "name": "Silva Lda \u2014 meeting-booked",
        "stage": "contractsent",
        "pipeline": None,
        "amount_minor": 129_950,
        "currency": "EUR",
    }
    # A replay of the merge makes the same command; another merge of the deal another one.
    again = merge_outputs(survivor, merged, "c-b", "phone:x", T0, adopted=retired.open_deals)
    assert again[2][2]["command_id"] == create["command_id"]
    other = merge_outputs(survivor, merged, "c-c", "phone:x", T0, adopted=["d-b"])
    assert other[2][2]["command_id"] != create["command_id"]
    # Nothing adopted, nothing made again.
    assert [o[2]["command_type"] for o in merge_outputs(survivor, merged, "c-b", "x", T0)] == [
        "MERGE_CONTACTS",
        "UPSERT_CONTACT",
    ]
