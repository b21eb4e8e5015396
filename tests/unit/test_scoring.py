"""Lead scoring: pure functions of (contact state, event, model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.contact import advance
from processors.scoring import (
    ScoreDecision,
    ScoringModel,
    components_at,
    is_meaningful,
    load_model,
    total,
)
from processors.state import ContactState

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
MODEL = load_model()


def event(event_type: str, at: datetime, n: int = 0, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{event_type}-{at.isoformat()}-{n}",
        "event_type": event_type,
        "source_system": "test",
        "event_time": at,
        "received_time": at,
        "identity": {"email": "ana@example.com", "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": "c-1",
        "payload": payload,
    }


def run(
    events: list[dict[str, Any]], model: ScoringModel = MODEL
) -> tuple[ContactState, list[ScoreDecision]]:
    """Advance a contact through ``events`` as the contact-state stage does."""
    state, decisions = ContactState(contact_id="c-1"), []
    for e in events:
        outcome = advance(state, e, model)
        state = outcome.state
        if outcome.score is not None:
            decisions.append(outcome.score)
    return state, decisions


def test_behavioural_points_add_up_and_name_their_rules() -> None:
    state, decisions = run(
        [
            event("FORM_SUBMITTED", T0, fields={}, form_id="f"),
            event(
                "CALL_COMPLETED", T0, direction="INBOUND", status="completed", outcome="qualified"
            ),
        ]
    )
    assert decisions[0].rules == ["form-submitted"]
    assert decisions[1].rules == ["inbound-call", "qualified-by-voice-ai"]
    assert state.score == 15 + 20 + 15
    assert state.band == "MQL" and decisions[1].crossed_band


def test_the_third_pricing_view_within_a_week_scores_once() -> None:
    views = [
        event("PAGE_VIEWED", T0 + timedelta(days=d), url="https://x/pricing") for d in (0, 1, 2)
    ]
    _, decisions = run(views)
    assert [d.rules for d in decisions] == [[], [], ["pricing-page-interest"]]


def test_pricing_views_spread_over_more_than_a_week_do_not_score() -> None:
    views = [
        event("PAGE_VIEWED", T0 + timedelta(days=d), url="https://x/pricing") for d in (0, 4, 8)
    ]
    _, decisions = run(views)
    assert all(d.rules == [] for d in decisions)


def test_behaviour_halves_every_half_life_in_event_time() -> None:
    state, _ = run([event("MEETING_BOOKED", T0, meeting_id="m", starts_at=T0)])
    later = T0 + timedelta(days=MODEL.half_life_days)
    assert components_at(state.scoring, state.profile, MODEL, later)["behaviour"] == 12.5


def test_negative_signals_do_not_decay_and_the_score_stays_at_or_above_zero() -> None:
    state, decisions = run(
        [
            event("FORM_SUBMITTED", T0, fields={}, form_id="f"),
            event("EMAIL_UNSUBSCRIBED", T0 + timedelta(minutes=1), message_id=None, list_id=None),
        ]
    )
    assert decisions[1].score == 0
    assert state.consent.email_opt_out
    far = T0 + timedelta(days=365)
    assert components_at(state.scoring, state.profile, MODEL, far)["negative"] == -30


def test_firmographics_and_a_competitor_domain() -> None:
    profile_event = event(
        "CONTACT_UPDATED",
        T0,
        properties={
            "company_size": "120",
            "industry": "SaaS",
            "title": "VP Operations",
            "country": "US",
        },
        previous={},
    )
    state, decisions = run([profile_event])
    assert decisions[0].components["firmographic"] == 40  # 10+10+15+5, capped at 40
    assert (state.score, state.band) == (40, "MQL")
    rival = {
        **profile_event,
        "event_id": "rival",
        "identity": {**profile_event["identity"], "email": "x@rivalheating.example"},
    }
    rival_state, rival_decisions = run([rival])
    assert rival_decisions[0].components["firmographic"] == -10  # 40 - 50
    assert rival_state.score == 0


def test_a_duplicate_event_changes_nothing() -> None:
    form = event("FORM_SUBMITTED", T0, fields={}, form_id="f")
    once, _ = run([form])
    twice, decisions = run([form, form])
    assert twice == once
    assert len(decisions) == 1  # the duplicate decided nothing


def test_small_changes_are_not_meaningful() -> None:
    _, decisions = run([event("EMAIL_OPENED", T0, message_id="m", user_agent=None)])
    assert decisions[0].score == 1
    assert not is_meaningful(decisions[0], MODEL)


EVENTS = st.sampled_from(
    [
        ("FORM_SUBMITTED", {"fields": {}, "form_id": "f"}),
        ("MEETING_BOOKED", {"meeting_id": "m", "starts_at": T0}),
        ("EMAIL_REPLIED", {"message_id": "m"}),
        ("EMAIL_CLICKED", {"message_id": "m", "url": "u"}),
        ("PAGE_VIEWED", {"url": "https://x/pricing"}),
        ("CALL_COMPLETED", {"direction": "INBOUND", "status": "completed", "outcome": "qualified"}),
        ("EMAIL_UNSUBSCRIBED", {"message_id": None, "list_id": None}),
        ("MEETING_CANCELLED", {"meeting_id": "m"}),
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.integers(0, 72)), max_size=40))
def test_the_score_never_leaves_zero_to_cap(
    timeline: list[tuple[tuple[str, dict[str, Any]], int]],
) -> None:
    at, events = T0, []
    for n, ((kind, payload), gap_hours) in enumerate(timeline):
        at += timedelta(hours=gap_hours)
        events.append(event(kind, at, n, **payload))
    _, decisions = run(events)
    assert all(0 <= d.score <= MODEL.cap for d in decisions)
    assert all(d.components["behaviour"] <= (MODEL.behaviour_cap or MODEL.cap) for d in decisions)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["FORM_SUBMITTED", "MEETING_BOOKED", "EMAIL_REPLIED"]),
        min_size=1,
        max_size=20,
    ),
    st.lists(st.floats(0, 400), min_size=2, max_size=6),
)
def test_without_new_events_the_score_only_decays(kinds: list[str], days: list[float]) -> None:
    payloads: dict[str, dict[str, Any]] = {
        "FORM_SUBMITTED": {"fields": {}, "form_id": "f"},
        "MEETING_BOOKED": {"meeting_id": "m", "starts_at": T0},
        "EMAIL_REPLIED": {"message_id": "m"},
    }
    state, _ = run([event(k, T0, n, **payloads[k]) for n, k in enumerate(kinds)])
    scores = [
        total(components_at(state.scoring, state.profile, MODEL, T0 + timedelta(days=d)), MODEL)
        for d in sorted(days)
    ]
    assert scores == sorted(scores, reverse=True)
