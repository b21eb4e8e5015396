"""Every shipped workflow, every branch, simulated over scripted timelines (the engine the
worker runs, without Kafka), and the shared rules (quiet hours, frequency cap, group
collisions, consent, old triggers) on the packaged library."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.sinks.notify.templates import TEMPLATES, render_sms, render_text
from processors.pipeline import load_rules as load_pipeline
from processors.scoring import load_model
from processors.state import Consent, ContactState, Deal
from processors.workflows.effects import Audit, DealStage, Message, Task, Upsert
from processors.workflows.engine import Engine
from processors.workflows.library import DEFAULT_LIBRARY, load_library
from processors.workflows.runbook import RunBook
from processors.workflows.simulation import Simulation, library_for, simulate

# Monday 2026-11-23 15:00 UTC is 10:00 in New York (the policies' zone): not quiet hours.
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
MODEL = load_model()
PIPELINE = load_pipeline()
LIBRARY = load_library()


def contact(**changes: Any) -> ContactState:
    base: dict[str, Any] = {
        "contact_id": "c-1",
        "identifiers": ["email:ana@example.com", "phone:+15550100"],
        "profile": {"first_name": "Ana", "company": "Acme"},
        "owner_id": "rep-jordan",
        "owner_email": "jordan@example.com",
        "manager_email": "maria@example.com",
    }
    return ContactState.model_validate(base | changes)


def event(kind: str, at: datetime, n: int = 1, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}-{n}",
        "event_type": kind,
        "source_system": "test",
        "event_time": at,
        "received_time": at,
        "identity": {},
        "contact_id": None,
        "payload": payload,
    }


def form(at: datetime = T0, n: int = 1) -> dict[str, Any]:
    return event("FORM_SUBMITTED", at, n, form_id="contact", fields={})


def call(at: datetime, status: str, n: int = 1, **more: Any) -> dict[str, Any]:
    return event("CALL_COMPLETED", at, n, direction="INBOUND", status=status, **more)


def reply(at: datetime, snippet: str, n: int = 1) -> dict[str, Any]:
    return event("EMAIL_REPLIED", at, n, message_id=f"m-{n}", snippet=snippet)


def run(
    name: str,
    events: list[dict[str, Any]],
    state: ContactState | None = None,
    until: datetime | None = None,
) -> Simulation:
    library, workflow = library_for(DEFAULT_LIBRARY / f"{name}.yaml")
    return simulate(library, state or contact(), events, MODEL, PIPELINE, until, workflow=workflow)


def audits(result: Simulation, decision: str) -> list[Audit]:
    return [e for e in result.effects() if isinstance(e, Audit) and e.decision == decision]


def branches(result: Simulation) -> list[str]:
    return [a.inputs["goto"] for a in audits(result, "workflow_branch")]


def messages(result: Simulation) -> list[tuple[str, str, str]]:
    return [
        (m.channel, m.recipient, m.template) for m in result.effects() if isinstance(m, Message)
    ]


def tasks(result: Simulation) -> list[str]:
    return [t.title for t in result.effects() if isinstance(t, Task)]


def upserts(result: Simulation) -> dict[str, str]:
    found: dict[str, str] = {}
    for effect in result.effects():
        if isinstance(effect, Upsert):
            found |= effect.properties
    return found


def exited(result: Simulation, name: str) -> str | None:
    assert name not in result.book.runs, f"{name} is still running"
    return result.book.history[name].last_exit


def not_entered(result: Simulation) -> list[str]:
    return [a.inputs["because"] for a in audits(result, "workflow_not_entered")]


# ---- missed-call-text-back ---------------------------------------------------------------

MISSED = "missed-call-text-back"


def test_missed_call_task_and_text_then_the_owner_hears_when_nobody_answers() -> None:
    result = run(MISSED, [call(T0, "no-answer")])
    assert tasks(result) == ["Call back Ana: missed call"]
    assert messages(result) == [
        ("SMS", "+15550100", "missed_call_text_back"),
        ("EMAIL", "jordan@example.com", "workflow_attention"),
    ]
    assert branches(result) == ["tell-owner"]
    assert exited(result, MISSED) == "no-answer"
    assert upserts(result) == {"workflow_tags": "missed-call-unanswered"}


def test_missed_call_then_a_booking_is_booked_and_a_qualified_lead() -> None:
    booked = event("MEETING_BOOKED", T0 + H, meeting_id="m-1")
    result = run(MISSED, [call(T0, "no-answer"), booked])
    assert branches(result) == ["booked"]
    assert exited(result, MISSED) == "booked"
    assert upserts(result)["lifecyclestage"] == "salesqualifiedlead"


def test_missed_call_then_an_email_reply_is_reached() -> None:
    result = run(MISSED, [call(T0, "no-answer"), reply(T0 + H, "call me tomorrow")])
    assert branches(result) == ["replied"]
    assert exited(result, MISSED) == "reached"


def test_missed_call_then_a_completed_call_meets_the_goal() -> None:
    result = run(MISSED, [call(T0, "no-answer"), call(T0 + H, "completed", 2)])
    assert "goal met: call completed" in audits(result, "workflow_exited")[0].reason
    assert exited(result, MISSED) == "reached"


def test_missed_call_without_a_phone_number_does_not_enter() -> None:
    result = run(MISSED, [call(T0, "no-answer")], contact(identifiers=["email:a@example.com"]))
    assert not_entered(result) == ["entry_filter"]
    assert messages(result) == []


def test_missed_call_reenters_after_a_day_not_before() -> None:
    result = run(
        MISSED,
        [call(T0, "no-answer"), call(T0 + 12 * H, "busy", 2), call(T0 + 2 * D, "busy", 3)],
    )
    assert not_entered(result) == ["reentry"]
    assert len(audits(result, "workflow_entered")) == 2


# ---- new-web-lead -------------------------------------------------------------------------

WEB = "new-web-lead"


def test_a_web_lead_that_replies_gets_a_reply_task_and_exits_replied() -> None:
    result = run(WEB, [form(), reply(T0 + D, "yes, let's talk")])
    assert branches(result) == ["first-outreach", "replied"]
    assert messages(result) == [("EMAIL", "ana@example.com", "web_lead_welcome")]
    assert tasks(result) == ["Ana replied: answer today"]
    assert exited(result, WEB) == "replied"
    assert upserts(result)["lifecyclestage"] == "marketingqualifiedlead"


def test_a_hot_web_lead_gets_a_call_now_task_first() -> None:
    # Firmographics 40 + a completed call 20 + the form 15: 75, the SQL band, scored as
    # the worker scores it.
    hot = contact(
        profile={
            "first_name": "Ana",
            "title": "Owner",
            "industry": "saas",
            "company_size": "80",
            "country": "US",
        }
    )
    result = run(WEB, [call(T0 - H, "completed", 9), form()], hot, until=T0 + H)
    assert branches(result) == ["call-now"]
    assert tasks(result) == ["Call Ana now: hot web lead"]
    assert messages(result) == [("EMAIL", "ana@example.com", "web_lead_welcome")]


@pytest.mark.parametrize(
    "answer",
    [
        reply(T0 + D, "Not interested, thanks"),
        event("EMAIL_UNSUBSCRIBED", T0 + D, message_id="m-1", list_id="news"),
    ],
    ids=["declined-by-reply", "unsubscribed"],
)
def test_a_web_lead_that_declines_exits_declined_and_the_owner_hears(
    answer: dict[str, Any],
) -> None:
    result = run(WEB, [form(), answer])
    assert branches(result) == ["first-outreach", "declined"]
    assert exited(result, WEB) == "declined"
    assert messages(result)[-1] == ("EMAIL", "jordan@example.com", "workflow_outcome")


def test_a_web_lead_that_replies_to_the_follow_up_exits_replied() -> None:
    result = run(WEB, [form(), reply(T0 + 3 * D, "sounds good")])
    assert branches(result) == ["first-outreach", "follow-up", "replied"]
    assert [m[2] for m in messages(result)] == ["web_lead_welcome", "web_lead_follow_up"]


def test_a_silent_web_lead_gets_two_emails_a_weekday_morning_call_task_then_nurture() -> None:
    result = run(WEB, [form()])
    assert branches(result) == ["first-outreach", "follow-up", "morning-call"]
    assert [m[2] for m in messages(result)] == ["web_lead_welcome", "web_lead_follow_up"]
    # Silence ran out on Saturday 28th at 15:00 UTC; the task waits for Monday 10:00 in New York.
    [task] = [e for e in result.effects() if isinstance(e, Task)]
    assert task.title == "Last try: call Ana, no reply to two e-mails"
    assert task.due_at == datetime(2026, 11, 30, 15, 0, tzinfo=UTC) + 4 * H
    assert exited(result, WEB) == "nurture"


def test_a_web_lead_that_books_meets_the_goal_at_any_step() -> None:
    booked = event("MEETING_BOOKED", T0 + 3 * D, meeting_id="m-1")
    result = run(WEB, [form(), booked])
    assert exited(result, WEB) == "booked"
    assert upserts(result)["workflow_tags"] == "web-lead-booked"


@pytest.mark.parametrize(
    "state",
    [
        contact(identifiers=["phone:+15550100"]),
        contact(lifecycle_stage="customer"),
        contact(consent=Consent(email_opt_out=True)),
    ],
    ids=["no-email", "customer", "opted-out"],
)
def test_who_may_not_enter_the_web_lead_sequence(state: ContactState) -> None:
    result = run(WEB, [form()], state)
    assert not_entered(result) == ["entry_filter"]


# ---- voice-ai-qualified -------------------------------------------------------------------

VOICE = "voice-ai-qualified"


def qualified(at: datetime = T0) -> dict[str, Any]:
    return call(at, "completed", outcome="qualified")


def test_a_qualified_caller_who_books_moves_the_deal_to_appointmentscheduled() -> None:
    deal = Deal(deal_id="d-1", stage="new", updated_at=T0 - D)
    booked = event("MEETING_BOOKED", T0 + 2 * H, meeting_id="m-1")
    result = run(VOICE, [qualified(), booked], contact(open_deals={"d-1": deal}))
    assert messages(result) == [("SMS", "+15550100", "booking_link")]
    assert exited(result, VOICE) == "booked"
    [move] = [e for e in result.effects() if isinstance(e, DealStage)]
    assert (move.deal_id, move.previous_stage, move.stage) == ("d-1", "new", "appointmentscheduled")


@pytest.mark.parametrize(
    "decline",
    [
        event("MEETING_CANCELLED", T0 + H, meeting_id="m-1", cancelled_by="contact"),
        call(T0 + H, "completed", 2, outcome="not_interested"),
    ],
    ids=["cancelled", "not-interested"],
)
def test_a_qualified_caller_who_declines_exits_declined(decline: dict[str, Any]) -> None:
    result = run(VOICE, [qualified(), decline])
    assert branches(result) == ["declined"]
    assert exited(result, VOICE) == "declined"


def test_a_qualified_caller_who_never_books_is_handed_to_a_rep() -> None:
    result = run(VOICE, [qualified()])
    assert [m[2] for m in messages(result)] == [
        "booking_link",
        "booking_reminder",
        "workflow_outcome",
    ]
    assert branches(result) == ["reminder", "hand-to-rep"]
    assert tasks(result) == ["Ana qualified on the AI call but has not booked: call them"]
    assert exited(result, VOICE) == "needs-rep"


# ---- payment-onboarding -------------------------------------------------------------------

ONBOARD = "payment-onboarding"


def payment(at: datetime = T0) -> dict[str, Any]:
    return event("PAYMENT_RECEIVED", at, payment_id="p-1", amount_minor=50000, currency="USD")


def test_a_payment_makes_a_customer_welcomes_them_and_a_booked_kickoff_ends_it() -> None:
    booked = event("MEETING_BOOKED", T0 + D, meeting_id="m-1")
    result = run(ONBOARD, [payment(), booked])
    assert upserts(result)["lifecyclestage"] == "customer"
    assert messages(result) == [("EMAIL", "ana@example.com", "onboarding_welcome")]
    assert tasks(result) == ["Book the kick-off with Ana"]
    assert exited(result, ONBOARD) == "kickoff-booked"


def test_an_onboarding_that_stalls_checks_in_then_tells_the_manager() -> None:
    result = run(ONBOARD, [payment()])
    assert [m[2] for m in messages(result)] == [
        "onboarding_welcome",
        "onboarding_check_in",
        "workflow_attention",
    ]
    assert messages(result)[-1][1] == "maria@example.com"
    assert exited(result, ONBOARD) == "stalled"


def test_a_completed_kickoff_meets_the_onboarding_goal_and_it_never_runs_again() -> None:
    done = event("MEETING_COMPLETED", T0 + 2 * D, meeting_id="m-1")
    result = run(ONBOARD, [payment(), done, payment(T0 + 40 * D)])
    assert exited(result, ONBOARD) == "onboarded"
    assert not_entered(result) == ["reentry"]  # reentry is never (and a customer now)


# ---- job-completed ------------------------------------------------------------------------

JOB = "job-completed"


def job(job_type: str, at: datetime = T0) -> dict[str, Any]:
    return event("JOB_STATUS_CHANGED", at, job_id="J-7", job_type=job_type, status="completed")


def test_a_finished_job_is_surveyed_at_ten_the_next_morning_by_email() -> None:
    result = run(JOB, [job("repair")])  # finished at 10:00 New York: the survey waits a day
    [sent] = [e for e in result.effects() if isinstance(e, Message)]
    assert (sent.channel, sent.template) == ("EMAIL", "satisfaction_survey")
    assert sent.context["job_id"] == "J-7"
    sent_at = [m.at for m in result.moments if any(isinstance(e, Message) for e in m.effects)]
    assert sent_at == [T0 + D]
    assert branches(result) == ["survey-email", "needs-inspection", "done"]
    assert exited(result, JOB) == "surveyed"


def test_an_installation_gets_its_inspection_task() -> None:
    result = run(JOB, [job("boiler_installation")])
    assert tasks(result) == ["Follow-up inspection for job J-7 (boiler_installation)"]
    # ...and the task schedules an inspection job (records.scheduled_job_outputs).
    [task] = [t for t in result.effects() if isinstance(t, Task)]
    assert (task.job_type, task.related_job_id) == ("inspection", "J-7")
    assert exited(result, JOB) == "inspection-booked"


def test_without_email_the_survey_goes_by_sms_and_without_either_it_is_skipped() -> None:
    by_sms = run(JOB, [job("repair")], contact(consent=Consent(email_opt_out=True)))
    assert [(m[0], m[2]) for m in messages(by_sms)] == [("SMS", "satisfaction_survey")]
    nothing = run(JOB, [job("repair")], contact(identifiers=["crm:7"]))
    assert messages(nothing) == []
    assert branches(nothing) == ["needs-inspection", "done"]


def test_an_unhappy_answer_reaches_owner_and_manager() -> None:
    result = run(JOB, [job("repair"), reply(T0 + D + H, "Poor work, the heater is broken")])
    assert [(m[1], m[2]) for m in messages(result)][1:] == [
        ("jordan@example.com", "workflow_attention"),
        ("maria@example.com", "workflow_outcome"),
    ]
    assert exited(result, JOB) == "unhappy"


def test_a_happy_answer_meets_the_goal() -> None:
    result = run(JOB, [job("repair"), reply(T0 + D + H, "Great job, thank you!")])
    assert exited(result, JOB) == "happy"


# ---- stale-deal-re-engagement ---------------------------------------------------------------

STALE = "stale-deal-re-engagement"


def breach(at: datetime = T0) -> dict[str, Any]:
    return event("SLA_BREACHED", at, policy="stale-deal", level="1", deal_id="d-1")


def with_deal() -> ContactState:
    return contact(
        open_deals={"d-1": Deal(deal_id="d-1", stage="proposalsent", updated_at=T0 - 20 * D)}
    )


def test_a_stale_deal_that_stays_silent_is_closed_lost_and_the_owner_told() -> None:
    result = run(STALE, [breach()], with_deal())
    assert [m[2] for m in messages(result)] == [
        "re_engagement",
        "re_engagement",
        "workflow_outcome",
    ]
    [move] = [e for e in result.effects() if isinstance(e, DealStage)]
    assert (move.previous_stage, move.stage) == ("proposalsent", "closedlost")
    assert exited(result, STALE) == "closed-lost"


def test_a_reply_re_engages_a_stale_deal() -> None:
    result = run(STALE, [breach(), reply(T0 + 2 * D, "still keen")], with_deal())
    assert exited(result, STALE) == "re-engaged"
    assert [e for e in result.effects() if isinstance(e, DealStage)] == []


def test_an_unsubscribe_closes_a_stale_deal_lost_at_once() -> None:
    gone = event("EMAIL_UNSUBSCRIBED", T0 + D, message_id="m-1", list_id="sales")
    result = run(STALE, [breach(), gone], with_deal())
    assert branches(result) == ["lost"]
    assert exited(result, STALE) == "closed-lost"


def test_a_breach_without_an_open_deal_enters_nothing() -> None:
    result = run(STALE, [breach()])
    assert not_entered(result) == ["entry_filter"]


# ---- the shared rules, on the packaged library ------------------------------------------------


def everything(events: list[dict[str, Any]], state: ContactState | None = None) -> Simulation:
    return simulate(
        LIBRARY,
        state or contact(),
        events,
        MODEL,
        PIPELINE,
        until=events[-1]["event_time"] + 10 * D,
    )


def test_quiet_hours_hold_a_send_until_eight_on_the_contacts_clock() -> None:
    night = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)  # 23:00 in New York
    result = run(MISSED, [call(night, "no-answer")])
    [deferred] = audits(result, "workflow_deferred")
    assert deferred.inputs["until"] == "2026-11-24T13:00:00+00:00"  # 08:00 in New York
    sent_at = [
        m.at
        for m in result.moments
        for e in m.effects
        if isinstance(e, Message) and e.template == "missed_call_text_back"
    ]
    assert sent_at == [datetime(2026, 11, 24, 13, 0, tzinfo=UTC)]
    assert tasks(result) == ["Call back Ana: missed call"]  # the task did not wait


def test_the_sms_cap_holds_across_workflows() -> None:
    # No e-mail: a missed call's text (1), a qualified call's booking link (2), then the
    # job survey by SMS at 10:00 the next day, within a day of both: a third, suppressed.
    state = contact(consent=Consent(email_opt_out=True))
    result = everything(
        [
            call(T0 + timedelta(minutes=30), "no-answer"),
            qualified(T0 + H),
            job("repair", T0 + 2 * H),
        ],
        state,
    )
    [capped] = [a for a in audits(result, "workflow_suppressed") if a.suppressed == "frequency_cap"]
    assert (capped.workflow, capped.inputs["template"]) == ("job-completed", "satisfaction_survey")
    assert "the contact had 2 in 1d (cap 2)" in capped.reason
    times = sorted(
        m.at
        for m in result.moments
        for e in m.effects
        if isinstance(e, Message) and e.channel == "SMS"
    )
    assert all(len([t for t in times if s <= t < s + D]) <= 2 for s in times)


def test_a_missed_call_preempts_the_web_lead_sequence_and_not_the_other_way() -> None:
    result = everything([form(), call(T0 + H, "no-answer")])
    exits = [(a.workflow, a.inputs["exit"]) for a in audits(result, "workflow_exited")]
    assert exits[0] == ("new-web-lead", "preempted")
    assert result.state is not None and "web-lead-preempted" in result.state.tags
    later = everything([call(T0, "no-answer"), form(T0 + H)])
    refused = [a for a in audits(later, "workflow_not_entered") if a.workflow == "new-web-lead"]
    assert [a.inputs["because"] for a in refused] == ["group"]


def test_an_opted_out_contacts_send_is_suppressed_and_the_run_goes_on() -> None:
    result = run(ONBOARD, [payment()], contact(consent=Consent(email_opt_out=True)))
    suppressed = [
        (a.suppressed, a.inputs["template"]) for a in audits(result, "workflow_suppressed")
    ]
    assert suppressed == [("consent", "onboarding_welcome"), ("consent", "onboarding_check_in")]
    assert [m[2] for m in messages(result)] == ["workflow_attention"]  # to the manager
    assert exited(result, ONBOARD) == "stalled"


def test_a_trigger_older_than_max_trigger_age_enrols_nobody() -> None:
    old = call(T0 - 2 * D, "no-answer")
    library, _ = library_for(DEFAULT_LIBRARY / f"{MISSED}.yaml")
    outcome = Engine(library).on_event(RunBook(), contact(), old, T0)
    assert [a.inputs["because"] for a in outcome.effects if isinstance(a, Audit)] == [
        "trigger_too_old"
    ]


def test_every_template_the_workflows_use_exists_and_renders() -> None:
    used: set[str] = set()
    for versions in LIBRARY.versions.values():
        for workflow in versions.values():
            for step in workflow.steps:
                used |= {a.template for a in (step.send, step.notify) if a is not None}
            used |= {e.notify.template for e in workflow.exits.values() if e.notify}
    assert used <= set(TEMPLATES), used - set(TEMPLATES)
    # Render what the simulations above would send, with the engine's context.
    result = everything(
        [job("boiler_installation"), call(T0 + H, "no-answer"), qualified(T0 + 2 * H)]
    )
    rendered = 0
    for effect in result.effects():
        if isinstance(effect, Message):
            record = {
                "channel": effect.channel,
                "recipient": effect.recipient,
                "template": effect.template,
                "subject": effect.subject,
                "context": effect.context,
            }
            text = render_sms(record) if effect.channel == "SMS" else render_text(record)[1]
            assert "Ana" in text or "${" not in text
            rendered += 1
    assert rendered >= 3


def test_a_pass_leaves_the_contact_state_it_was_given_as_it_was() -> None:
    """The engine's pass copies only what it changes in place (the open deals): the state
    handed in, which the contact stage still holds, must not move while the pass moves
    the deal, the lifecycle stage and the tags."""
    library, workflow = library_for(DEFAULT_LIBRARY / f"{VOICE}.yaml")
    engine = Engine(library, PIPELINE, {workflow})
    deal = Deal(deal_id="d-1", stage="new", updated_at=T0 - D)
    state, book = contact(open_deals={"d-1": deal}), RunBook()
    booked = event("MEETING_BOOKED", T0 + 2 * H, meeting_id="m-1")
    moved = False
    for each in (qualified(), booked):
        before = state.model_dump()
        outcome = engine.on_event(book, state, each, each["event_time"])
        assert state.model_dump() == before
        moved = moved or outcome.state.open_deals != state.open_deals
        book, state = outcome.book, outcome.state
    assert moved  # the pass did change a deal
