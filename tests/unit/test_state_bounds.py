"""A contact's state stays bounded however many interactions name it (issue 20, item 7):
a thousand calls, each with its own external id, keep the contact's own identifiers and
at most IDENTIFIERS_KEPT in all, and so does a merge of two such contacts. Event ids of
sources that sign no time are remembered for a window, not a count (item 11)."""

from __future__ import annotations

from datetime import timedelta

from processors.identity import merge_states
from processors.state import IDENTIFIERS_KEPT, REPLAY_WINDOW, ContactState, apply_event
from tests.records import contact_event


def called(state: ContactState, n: int, phone: str = "+351912345678") -> ContactState:
    at = contact_event()["event_time"] + timedelta(minutes=n)
    event = contact_event(
        event_id=f"vapi:call-{n}",
        event_time=at,
        identity={
            "email": None,
            "phone": phone,
            "crm_id": None,
            "external_ids": {"vapi": f"call-{n}"},
        },
    )
    return apply_event(state, event)


def test_a_thousand_calls_keep_the_phone_and_the_newest_call_ids() -> None:
    state = apply_event(ContactState(contact_id="c-1"), contact_event())
    for n in range(1000):
        state = called(state, n)
    assert len(state.identifiers) == IDENTIFIERS_KEPT
    assert state.identifiers[:2] == ["email:ana.silva@example.com", "phone:+351912345678"]
    assert "ext:vapi:call-999" in state.identifiers
    assert "ext:vapi:call-0" not in state.identifiers
    assert len(state.model_dump_json()) < 64 * 1024  # far under Kafka's 1 MB record


def test_a_merge_of_two_busy_contacts_is_bounded_too() -> None:
    one, other = ContactState(contact_id="c-1"), ContactState(contact_id="c-2")
    for n in range(200):
        one = called(one, n)
        other = called(other, 1000 + n, phone="+14155550132")
    merged = merge_states(one, other)
    assert len(merged.identifiers) == IDENTIFIERS_KEPT
    assert {"phone:+351912345678", "phone:+14155550132"} <= set(merged.identifiers)


def test_a_replayed_call_is_seen_however_many_events_came_between() -> None:
    """Issue 20, item 11: Twilio, Typeform and Vapi sign no time, so a captured request
    can be posted again days later. Its event id is kept for REPLAY_WINDOW beside the last
    500 of every source: 600 e-mail opens in between no longer let it through."""
    at = contact_event()["event_time"]
    call = contact_event(
        event_id="twilio:CA-1", source_system="twilio", received_time=at, event_time=at
    )
    state = apply_event(ContactState(contact_id="c-1"), call)
    for n in range(600):
        opened = at + timedelta(minutes=n)
        state = apply_event(
            state,
            contact_event(
                event_id=f"mailgun:open-{n}",
                source_system="mailgun",
                event_time=opened,
                received_time=opened,
            ),
        )
    assert "twilio:CA-1" not in state.recent_event_ids
    assert state.has_seen("twilio:CA-1")
    assert apply_event(state, call) is state  # nothing changes

    later = at + REPLAY_WINDOW + timedelta(hours=1)
    state = apply_event(
        state,
        contact_event(
            event_id="vapi:call-2", source_system="vapi", event_time=later, received_time=later
        ),
    )
    assert not state.has_seen("twilio:CA-1")  # past the window: forgotten
    assert list(state.untimed_event_ids) == ["vapi:call-2"]


def test_an_event_leaves_the_state_it_was_given_as_it_was() -> None:
    """apply_event copies only what it changes in place: the state before an event (the
    contact stage compares it with the one after, and caches it) must not move."""
    at = contact_event()["event_time"]
    state = apply_event(ContactState(contact_id="c-1"), contact_event())
    state = apply_event(
        state,
        contact_event(
            event_id="crm:deal-1",
            event_type="DEAL_STAGE_CHANGED",
            source_system="hubspot",
            event_time=at + timedelta(minutes=1),
            payload={"deal_id": "d-1", "stage": "qualified"},
        ),
    )
    events = [
        contact_event(
            event_id="typeform:resp-2",
            event_time=at + timedelta(minutes=2),
            identity={**contact_event()["identity"], "phone": "+14155550132"},
            profile={"company": {"value": "Whitfield Bakery", "origin": "self"}},
        ),
        contact_event(
            event_id="crm:deal-2",
            event_type="DEAL_STAGE_CHANGED",
            source_system="hubspot",
            event_time=at + timedelta(minutes=3),
            payload={"deal_id": "d-1", "stage": "closedwon"},
        ),
        contact_event(
            event_id="mailgun:unsub-1",
            event_type="EMAIL_UNSUBSCRIBED",
            source_system="mailgun",
            event_time=at + timedelta(minutes=4),
            payload={},
        ),
        contact_event(
            event_id="mailgun:sent-1",
            event_type="EMAIL_SENT",
            source_system="mailgun",
            event_time=at + timedelta(minutes=5),
            payload={},
        ),
    ]
    for event in events:
        before = state.model_dump()
        after = apply_event(state, event)
        assert after.model_dump() != before
        assert state.model_dump() == before, event["event_type"]
        state = after
