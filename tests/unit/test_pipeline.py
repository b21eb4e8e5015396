"""Pipeline triggers: pure functions of (rules, contact state, event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.pipeline import (
    PipelineOutcome,
    PipelineRules,
    apply_rules,
    load_rules,
)
from processors.state import Consent, ContactState, Deal
from streams.rules import RuleFileError

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
RULES = load_rules()


def event(event_type: str, n: int = 0, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{event_type}-{n}",
        "event_type": event_type,
        "source_system": "test",
        "event_time": T0,
        "received_time": T0,
        "identity": {"email": "ana@example.com", "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": "c-1",
        "payload": payload,
    }


def contact(
    *stages: str,
    identifiers: tuple[str, ...] = ("email:ana@example.com", "phone:+351912345678"),
    consent: Consent | None = None,
) -> ContactState:
    """Ana, owned by rep-1, with an open deal d-1, d-2, ... at each of ``stages``; the
    last one was updated last."""
    deals = {
        f"d-{i}": Deal(deal_id=f"d-{i}", stage=stage, updated_at=T0 - timedelta(days=10 - i))
        for i, stage in enumerate(stages, start=1)
    }
    return ContactState(
        contact_id="c-1",
        identifiers=list(identifiers),
        profile={"first_name": "Ana", "last_name": "Silva", "company": "Silva Lda"},
        owner_id="rep-1",
        open_deals=deals,
        consent=consent or Consent(),
    )


def rules(*extra: dict[str, Any]) -> PipelineRules:
    return PipelineRules.model_validate(
        {"stages": RULES.stages, "rules": [r.model_dump() for r in RULES.rules] + list(extra)}
    )


def job_completed(job_type: str = "repair") -> dict[str, Any]:
    return event(
        "JOB_STATUS_CHANGED", job_id="J-7", job_type=job_type, status="completed", technician=None
    )


# ---- deal moves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("e", "rule", "stage"),
    [
        (event("EMAIL_REPLIED", message_id="m-1"), "email-replied", "replied"),
        (event("MEETING_BOOKED", meeting_id="mt-1"), "meeting-booked", "appointmentscheduled"),
        (event("MEETING_COMPLETED", meeting_id="mt-1"), "meeting-completed", "meetingcompleted"),
        (event("REP_ACTIVITY_LOGGED", activity_type="proposal"), "proposal-sent", "proposalsent"),
        (event("REP_ACTIVITY_LOGGED", activity_type="contract"), "contract-sent", "contractsent"),
    ],
)
def test_each_packaged_rule_moves_the_open_deal_forward(
    e: dict[str, Any], rule: str, stage: str
) -> None:
    outcome = apply_rules(RULES, contact("contacted"), e)
    [move] = outcome.moves
    assert (move.rule, move.deal_id, move.previous_stage, move.stage) == (
        rule,
        "d-1",
        "contacted",
        stage,
    )
    assert not move.created and move.deal_name is None
    assert outcome.state.open_deals["d-1"].stage == stage
    assert outcome.state.open_deals["d-1"].updated_at == T0


def test_a_rep_activity_that_is_not_a_proposal_or_contract_moves_nothing() -> None:
    state = contact("contacted")
    outcome = apply_rules(RULES, state, event("REP_ACTIVITY_LOGGED", activity_type="call"))
    assert outcome.moves == [] and outcome.state == state


def test_a_appointmentscheduled_without_an_open_deal_opens_one() -> None:
    outcome = apply_rules(RULES, contact(), event("MEETING_BOOKED", meeting_id="mt-1"))
    [move] = outcome.moves
    assert move.created and move.previous_stage is None
    assert move.stage == "appointmentscheduled"
    assert move.deal_name == "Silva Lda \u2014 meeting-booked"
    assert move.reason == "meeting booked (meeting-booked): new deal at appointmentscheduled"
    assert outcome.state.open_deals[move.deal_id].stage == "appointmentscheduled"


def test_an_opened_deal_keeps_its_name_so_a_merge_can_make_it_again() -> None:
    outcome = apply_rules(RULES, contact(), event("MEETING_BOOKED", meeting_id="mt-1"))
    [move] = outcome.moves
    assert outcome.state.open_deals[move.deal_id].name == "Silva Lda \u2014 meeting-booked"
    # A move keeps it; a deal known only from the CRM's change feed has none.
    moved = apply_rules(RULES, outcome.state, event("EMAIL_REPLIED", 1))
    assert moved.state.open_deals[move.deal_id].name == "Silva Lda \u2014 meeting-booked"
    assert contact("new").open_deals["d-1"].name is None


def test_a_reply_without_an_open_deal_opens_none() -> None:
    outcome = apply_rules(RULES, contact(), event("EMAIL_REPLIED", message_id="m-1"))
    assert outcome.moves == [] and outcome.state.open_deals == {}


def test_a_payment_closes_the_deal_won_and_it_is_no_longer_open() -> None:
    outcome = apply_rules(RULES, contact("proposalsent"), event("PAYMENT_RECEIVED"))
    [move] = outcome.moves
    assert move.stage == "closedwon"
    assert move.reason == "payment received (payment-closes-won): proposalsent -> closedwon"
    assert outcome.state.open_deals == {}


def test_the_most_recently_updated_open_deal_is_the_one_that_moves() -> None:
    outcome = apply_rules(RULES, contact("new", "contacted"), event("EMAIL_REPLIED"))
    assert [m.deal_id for m in outcome.moves] == ["d-2"]
    assert outcome.state.open_deals["d-1"].stage == "new"


def test_a_deal_never_moves_backwards() -> None:
    state = contact("proposalsent")
    outcome = apply_rules(RULES, state, event("EMAIL_REPLIED", message_id="m-1"))
    assert outcome.moves == [] and outcome.state == state


def test_a_rule_that_allows_it_moves_a_deal_back() -> None:
    back = {
        "name": "meeting-cancelled",
        "trigger": {"event": "MEETING_CANCELLED"},
        "move_to": "replied",
        "allow_backwards": True,
    }
    outcome = apply_rules(rules(back), contact("appointmentscheduled"), event("MEETING_CANCELLED"))
    assert [(m.previous_stage, m.stage) for m in outcome.moves] == [
        ("appointmentscheduled", "replied")
    ]


def test_closedlost_is_reachable_from_any_stage() -> None:
    lost = {
        "name": "lost",
        "trigger": {"event": "REP_ACTIVITY_LOGGED", "when": {"outcome": "lost"}},
        "move_to": "closedlost",
    }
    e = event("REP_ACTIVITY_LOGGED", activity_type="note", outcome="lost")
    outcome = apply_rules(rules(lost), contact("contractsent"), e)
    assert [m.stage for m in outcome.moves] == ["closedlost"]
    assert outcome.state.open_deals == {}


def test_a_stage_the_rules_do_not_know_ranks_before_every_stage() -> None:
    outcome = apply_rules(RULES, contact("qualification"), event("EMAIL_REPLIED"))
    assert [(m.previous_stage, m.stage) for m in outcome.moves] == [("qualification", "replied")]


@pytest.mark.parametrize(
    ("state", "e"),
    [
        (contact("contacted"), event("EMAIL_REPLIED", message_id="m-1")),
        (contact(), event("MEETING_BOOKED", meeting_id="mt-1")),
    ],
)
def test_the_same_event_twice_moves_once(state: ContactState, e: dict[str, Any]) -> None:
    first = apply_rules(RULES, state, e)
    second = apply_rules(RULES, first.state, e)
    assert len(first.moves) == 1
    assert second.moves == [] and second.state == first.state


def test_every_matching_rule_applies_in_file_order() -> None:
    two_on_a_click = [
        {"name": "clicked", "trigger": {"event": "EMAIL_CLICKED"}, "move_to": "contractsent"},
        {"name": "clicked-closes", "trigger": {"event": "EMAIL_CLICKED"}, "move_to": "closedwon"},
    ]
    outcome = apply_rules(rules(*two_on_a_click), contact("proposalsent"), event("EMAIL_CLICKED"))
    assert [(m.rule, m.previous_stage, m.stage) for m in outcome.moves] == [
        ("clicked", "proposalsent", "contractsent"),
        ("clicked-closes", "contractsent", "closedwon"),
    ]


# ---- a completed job: tasks and the survey ------------------------------------------

# The packaged rules only invoice a job (the job-completed workflow surveys and inspects);
# a rule with tasks under conditions and a message to the contact is still a pipeline rule.
WITH_SURVEY = rules(
    {
        "name": "job-survey",
        "trigger": {"event": "JOB_STATUS_CHANGED", "when": {"status": "completed"}},
        "tasks": [
            {
                "name": "inspection",
                "title": "Follow-up inspection for job ${job_id}",
                "due_in": "30d",
                "when": {"job_type": ["boiler_installation", "roof_replacement"]},
            }
        ],
        "notify_contact": [
            {
                "name": "survey",
                "template": "satisfaction_survey",
                "subject": "How did we do?",
                "channels": ["EMAIL", "SMS"],
            }
        ],
    }
)


def test_the_packaged_rules_only_invoice_a_completed_job() -> None:
    outcome = apply_rules(RULES, contact(), job_completed("boiler_installation"))
    assert [t.title for t in outcome.tasks] == ["Invoice job J-7 (boiler_installation)"]
    assert outcome.messages == []


def test_a_completed_job_creates_an_invoice_task_and_surveys_by_email() -> None:
    outcome = apply_rules(WITH_SURVEY, contact(), job_completed("repair"))
    assert outcome.moves == [] and outcome.skipped == []
    [task] = outcome.tasks
    assert (task.rule, task.title, task.due_at, task.owner_id, task.priority) == (
        "job-completed",
        "Invoice job J-7 (repair)",
        T0 + timedelta(days=1),
        "rep-1",
        "HIGH",
    )
    [message] = outcome.messages
    assert (message.channel, message.recipient, message.template, message.subject) == (
        "EMAIL",
        "ana@example.com",
        "satisfaction_survey",
        "How did we do?",
    )
    assert message.context == {
        "who": "Ana Silva",
        "first_name": "Ana",
        "company": "Silva Lda",
        "contact_id": "c-1",
        "job_id": "J-7",
        "job_type": "repair",
        "status": "completed",
    }


def test_a_job_type_that_needs_it_gets_a_follow_up_inspection() -> None:
    outcome = apply_rules(WITH_SURVEY, contact(), job_completed("boiler_installation"))
    assert [(t.title, t.due_at) for t in outcome.tasks] == [
        ("Invoice job J-7 (boiler_installation)", T0 + timedelta(days=1)),
        ("Follow-up inspection for job J-7", T0 + timedelta(days=30)),
    ]


def test_a_job_that_is_not_completed_creates_nothing() -> None:
    e = event("JOB_STATUS_CHANGED", job_id="J-7", job_type="repair", status="scheduled")
    outcome = apply_rules(WITH_SURVEY, contact(), e)
    assert (outcome.tasks, outcome.messages, outcome.skipped) == ([], [], [])


@pytest.mark.parametrize(
    "consent", [Consent(email_opt_out=True), Consent(email_bounced=True)], ids=str
)
def test_the_survey_falls_back_to_sms_when_email_cannot_be_used(consent: Consent) -> None:
    outcome = apply_rules(WITH_SURVEY, contact(consent=consent), job_completed())
    [message] = outcome.messages
    assert (message.channel, message.recipient) == ("SMS", "+351912345678")


def test_the_survey_is_skipped_with_a_reason_when_no_channel_can_be_used() -> None:
    state = contact(identifiers=("email:ana@example.com",), consent=Consent(email_opt_out=True))
    outcome: PipelineOutcome = apply_rules(WITH_SURVEY, state, job_completed())
    assert outcome.messages == []
    assert outcome.skipped == [
        "job-survey/survey: satisfaction_survey not sent: EMAIL opted out; SMS no phone number"
    ]
    assert len(outcome.tasks) == 1  # the invoice is still due


def test_ids_are_deterministic_and_differ_per_event() -> None:
    def ids(e: dict[str, Any]) -> list[str]:
        outcome = apply_rules(WITH_SURVEY, contact(), e)
        return [m.deal_id for m in outcome.moves] + [
            *(t.task_id for t in outcome.tasks),
            *(m.notification_id for m in outcome.messages),
        ]

    booked, job = event("MEETING_BOOKED", meeting_id="mt-1"), job_completed("roof_replacement")
    assert ids(booked) == ids(booked) and len(ids(booked)) == 1
    assert ids(job) == ids(job) and len(set(ids(job))) == 3
    assert ids(event("MEETING_BOOKED", 1, meeting_id="mt-2")) != ids(booked)


# ---- the rule file ------------------------------------------------------------------


def test_the_packaged_rules_load() -> None:
    assert RULES.stages[0] == "new" and RULES.stages[-1] == "closedwon"
    assert [r.name for r in RULES.rules][-1] == "job-completed"


def load_text(tmp_path: Path, rules_text: str) -> list[str]:
    """The error lines of a rule file with the packaged stages and ``rules_text``."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages: [new, replied, closedwon]\nrules:\n" + rules_text)
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    return [line.removeprefix(f"{path}:") for line in str(caught.value).splitlines()]


def test_a_move_to_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    errors = load_text(
        tmp_path, "  - name: reply\n    trigger: {event: EMAIL_REPLIED}\n    move_to: replyed\n"
    )
    assert errors == [
        "5: field rules.0.move_to: 'replyed' is not a stage "
        "(use one of: new, replied, closedwon, closedlost)"
    ]


def test_a_rule_without_an_action_is_refused(tmp_path: Path) -> None:
    errors = load_text(tmp_path, "  - name: reply\n    trigger: {event: EMAIL_REPLIED}\n")
    assert errors == ["3: field rules.0: give at least one of: move_to, tasks, notify_contact"]


def test_rule_names_must_be_unique(tmp_path: Path) -> None:
    rule = "  - {name: reply, trigger: {event: EMAIL_REPLIED}, move_to: replied}\n"
    errors = load_text(tmp_path, rule + rule)
    assert errors == ["2: field rules: rule names must be unique; repeated: reply"]


def test_a_bad_duration_names_the_value(tmp_path: Path) -> None:
    errors = load_text(
        tmp_path,
        """\
  - name: job
    trigger: {event: JOB_STATUS_CHANGED}
    tasks:
      - {name: invoice, title: Invoice, due_in: 1 day}
""",
    )
    assert errors == [
        "6: field rules.0.tasks.0.due_in: '1 day' is not a duration "
        "(write a number and a unit: 90s, 5m, 12h, 30d, 2w)"
    ]


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    errors = load_text(
        tmp_path,
        "  - name: reply\n    trigger: {event: EMAIL_REPLIED}\n    move_to: replied\n"
        "    allow_backward: true\n",
    )
    assert errors == [
        "6: field rules.0.allow_backward: Extra inputs are not permitted "
        "(remove it, or check its spelling)"
    ]


def test_on_as_a_key_is_explained(tmp_path: Path) -> None:
    # YAML reads `on` as true; the error says what to write instead.
    errors = load_text(
        tmp_path, "  - {name: reply, on: {event: EMAIL_REPLIED}, move_to: replied}\n"
    )
    assert errors == ["3: field rules.0: `on:` reads as true in YAML: write `trigger:`"]
