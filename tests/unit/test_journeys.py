"""Journey KPIs: the ``expected`` time of a step (validated, and its default), the marks
the engine puts on the audit entries it writes, the funnel counted from those entries, and
the worker's metrics, which count the same marks."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from processors.journeys import OUTCOMES, funnels, render
from processors.records.workflows import workflow_outputs
from processors.state import ContactState
from processors.workflows import runs
from processors.workflows.effects import Outcome
from processors.workflows.engine import Engine
from processors.workflows.library import Library, load_library
from processors.workflows.runbook import RunBook
from streams.rules import RuleFileError
from tests.unit.test_workflow_engine import T0, event

POLICIES = 'version: 1\ntimezone: UTC\nquiet_hours: {start: "21:00", end: "08:00"}\n'

ONBOARD = """
name: {name}
version: 1
purpose: Welcome, wait for a reply, follow up once.
owner: ops@example.com
trigger: {{event: FORM_SUBMITTED}}
entry: {{everyone: true}}
goal: {{events: [{{event: MEETING_BOOKED}}], exit: booked}}
steps:
  - id: welcome
    send: {{channel: EMAIL, template: welcome}}
  - id: wait-for-reply
    wait_for:
      - {{event: EMAIL_UNSUBSCRIBED, goto: gone}}
      - {{event: EMAIL_REPLIED, goto: replied}}
    timeout: 2d
    on_timeout: a-day
    {expected}
  - {{id: a-day, wait: 1d}}
  - id: morning
    wait_until: {{time: "10:00", days: [mon, tue, wed, thu, fri]}}
  - {{id: quiet, exit: quiet}}
  - {{id: replied, exit: replied}}
  - {{id: gone, exit: gone}}
exits:
  booked: {{tag: booked}}
  quiet: {{tag: quiet}}
  replied: {{tag: replied}}
  gone: {{tag: gone}}
"""


def library(tmp_path: Path, text: str) -> Library:
    directory = tmp_path / f"lib{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    (directory / "policies.yaml").write_text(POLICIES)
    (directory / "flow.yaml").write_text(text)
    return load_library(directory)


def onboard(name: str = "onboard", expected: str = "expected: 1d") -> str:
    return ONBOARD.format(name=name, expected=expected)


# ---- expected: validated, and its default ----------------------------------------------


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("{id: a-day, wait: 1d, expected: 12h}", "shorter than the step's wait 1d"),
        ("{id: a-day, wait: 1d, expected: 0s}", "expected must be longer than zero"),
        ("{id: a-day, wait: 1d, expected: soon}", "'soon' is not a duration"),
        ("{id: a-day, task: {title: Call, due_in: 1h}, expected: 1d}", "a task step is taken"),
    ],
)
def test_a_bad_expected_time_is_refused_naming_the_step_and_the_fix(
    tmp_path: Path, step: str, problem: str
) -> None:
    text = onboard().replace("{id: a-day, wait: 1d}", step)
    with pytest.raises(RuleFileError) as refused:
        library(tmp_path, text)
    message = str(refused.value)
    assert "steps.2" in message and problem in message, message
    assert "flow.yaml:" in message


def test_a_step_expects_what_its_own_wait_allows_unless_it_says(tmp_path: Path) -> None:
    lib = library(tmp_path, onboard(expected=""))
    flow = lib.current("onboard")
    assert flow is not None
    expected = {step.id: lib.expected(flow, step.id) for step in flow.steps}
    assert expected == {
        "welcome": timedelta(hours=11),  # the quiet hours it may wait out: 21:00-08:00
        "wait-for-reply": timedelta(days=2),  # its timeout
        "a-day": timedelta(days=1),
        "morning": timedelta(days=3),  # Friday 10:00 to Monday 10:00
        "quiet": None,
        "replied": None,
        "gone": None,
    }
    said = library(tmp_path, onboard()).current("onboard")
    assert said is not None and said.step("wait-for-reply") is not None
    assert library(tmp_path, onboard()).expected(said, "wait-for-reply") == timedelta(days=1)


# ---- the engine's marks, the funnel and the metrics ---------------------------------------


class Journeys:
    """Contacts driven through the engine one after another, their audit entries kept as
    the contact stage writes them (inputs as strings)."""

    def __init__(self, lib: Library) -> None:
        self.engine = Engine(lib)
        self.books: dict[str, RunBook] = {}
        self.states: dict[str, ContactState] = {}
        self.entries: list[dict[str, Any]] = []
        self.outcomes: list[Outcome] = []

    def contact(self, contact_id: str, email: bool = True) -> None:
        found = ["email:" + contact_id + "@example.com"] if email else []
        self.states[contact_id] = ContactState(contact_id=contact_id, identifiers=found)
        self.books[contact_id] = RunBook()

    def event(self, contact_id: str, kind: str, at: datetime) -> None:
        happened = event(kind, at, len(self.entries))
        self._keep(contact_id, self.engine.on_event, happened, at)

    def wait_over(self, contact_id: str, workflow: str) -> None:
        run = self.books[contact_id].runs[workflow]
        assert run.waiting_until is not None
        due = run.waiting_until
        self._keep(
            contact_id,
            lambda b, s, n, now: self.engine.on_due(b, s, n, due, run.seq, now),
            workflow,
            due,
        )

    def _keep(self, contact_id: str, call: Any, arg: Any, at: datetime) -> None:
        outcome = call(self.books[contact_id], self.states[contact_id], arg, at)
        self.books[contact_id], self.states[contact_id] = outcome.book, outcome.state
        self.outcomes.append(outcome)
        for _, _, entry in workflow_outputs(outcome.state, outcome.effects, at):
            if entry.get("stage") == "workflow":
                self.entries.append(entry)


def scenario(lib: Library, name: str) -> tuple[Journeys, datetime]:
    """Seven contacts through the workflow, and the time the funnel is looked at."""
    j = Journeys(lib)
    now = T0 + timedelta(days=4)
    for c in ("booked", "replied", "unsub", "timed-out", "silent", "late-comer"):
        j.contact(c)
    j.contact("no-email", email=False)
    for c in ("booked", "replied", "unsub", "timed-out", "silent", "no-email"):
        j.event(c, "FORM_SUBMITTED", T0)
    j.event("booked", "MEETING_BOOKED", T0 + timedelta(hours=3))
    j.event("replied", "EMAIL_REPLIED", T0 + timedelta(hours=5))
    j.event("unsub", "EMAIL_UNSUBSCRIBED", T0 + timedelta(hours=1))
    j.event("silent", "FORM_SUBMITTED", T0 + timedelta(hours=2))  # already in it
    j.wait_over("timed-out", name)  # the 2d timeout: on to a-day
    j.wait_over("timed-out", name)  # a-day over: on to morning
    j.event("late-comer", "FORM_SUBMITTED", now - timedelta(hours=6))
    return j, now


def test_the_funnel_counts_every_stay_at_every_step_from_the_audit_entries(
    tmp_path: Path,
) -> None:
    lib = library(tmp_path, onboard())
    j, now = scenario(lib, "onboard")
    [funnel] = funnels(j.entries, now).values()
    steps = funnel.steps
    assert funnel.entered == 7
    assert funnel.not_entered == Counter({"already_in": 1})
    welcome, replying = steps["welcome"], steps["wait-for-reply"]
    # no-email's welcome is suppressed: the contact did not get it.
    assert (welcome.entered, welcome.progressed, welcome.diverted) == (7, 6, {"consent": 1})
    assert replying.entered == 7
    assert replying.converted == 1  # booked
    assert replying.progressed == 2  # replied, and the timeout of timed-out
    assert replying.diverted == {"unsubscribed": 1}
    # silent and no-email wait since T0, longer than the 1d expected; late-comer 6h.
    assert (replying.stalled, replying.waiting) == (2, 1)
    assert sorted(replying.times) == [3600, 3 * 3600, 5 * 3600, 2 * 86400]
    assert replying.percentile(0.5) == 5 * 3600
    assert (steps["a-day"].entered, steps["a-day"].progressed) == (1, 1)
    assert steps["a-day"].times == [86400]
    assert (steps["replied"].entered, steps["replied"].finished) == (1, 1)
    assert (steps["gone"].entered, steps["gone"].finished) == (1, 1)
    # timed-out waits at morning (until Monday 10:00, within 3d): not stalled.
    assert (steps["morning"].entered, steps["morning"].waiting) == (1, 1)
    assert "quiet" not in steps
    # Whatever a step saw, each run that entered it is in exactly one column.
    for step in steps.values():
        ended = step.progressed + step.converted + step.finished + sum(step.diverted.values())
        assert step.entered == ended + step.waiting + step.stalled, step
    assert funnel.stall_reasons == Counter(
        {"wait-for-reply: its wait is over and it has not moved (a late timer)": 2}
    )
    text = render({"onboard": funnel}, {"onboard": [s.id for s in lib.workflows()[0].steps]})
    assert "wait-for-reply: unsubscribed" in text and "stalled because:" in text
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if x.strip().startswith("welcome"))) < lines.index(
        next(x for x in lines if x.strip().startswith("wait-for-reply"))
    )


def test_a_stall_is_judged_on_the_library_when_an_entry_does_not_say(tmp_path: Path) -> None:
    lib = library(tmp_path, onboard())
    j, now = scenario(lib, "onboard")
    for entry in j.entries:
        entry["inputs"].pop("expected_s", None)  # entries written before the marks
    [funnel] = funnels(j.entries, now, {("onboard", "wait-for-reply"): timedelta(days=5)}).values()
    assert (funnel.steps["wait-for-reply"].stalled, funnel.steps["wait-for-reply"].waiting) == (
        0,
        3,
    )


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_the_worker_counts_the_same_funnel_as_metrics(tmp_path: Path) -> None:
    name = "onboard-metrics"  # its own label values: other tests count other workflows
    lib = library(tmp_path, onboard(name))
    runs.declare_workflows(lib)
    flow = lib.current(name)
    assert flow is not None
    outcomes = ("entered", *OUTCOMES, "stalled")
    before = {
        (s.id, o): sample("switchboard_journey_steps_total", workflow=name, step=s.id, outcome=o)
        for s in flow.steps
        for o in outcomes
    }
    j, now = scenario(lib, name)
    for outcome in j.outcomes:
        runs._count(outcome)
    [funnel] = funnels(j.entries, now).values()
    for step in flow.steps:
        counted = funnel.steps.get(step.id)

        def delta(outcome: str, step_id: str = step.id) -> float:
            now_ = sample(
                "switchboard_journey_steps_total", workflow=name, step=step_id, outcome=outcome
            )
            return now_ - before[(step_id, outcome)]

        if counted is None:
            assert all(delta(o) == 0 for o in outcomes)
            continue
        assert delta("entered") == counted.entered
        assert delta("progressed") == counted.progressed
        assert delta("converted") == counted.converted
        assert delta("finished") == counted.finished
        assert delta("diverted") == sum(counted.diverted.values())
        for reason, n in counted.diverted.items():
            labels = {"workflow": name, "step": step.id, "reason": reason}
            assert sample("switchboard_journey_diversions_total", **labels) == n
    # The metric's stalls are runs that moved on late: timed-out left after 2d (> 1d).
    assert (
        sample(
            "switchboard_journey_steps_total",
            workflow=name,
            step="wait-for-reply",
            outcome="stalled",
        )
        - before[("wait-for-reply", "stalled")]
        == 1
    )
    labels = {"workflow": name, "step": "wait-for-reply"}
    assert sample("switchboard_journey_step_seconds_count", **labels) == 4
    assert sample("switchboard_journey_step_seconds_sum", **labels) == sum(
        funnel.steps["wait-for-reply"].times
    )


STAGE_UP = """
name: stage-up
version: 1
purpose: Make the contact a lead, pause, nudge them once.
owner: ops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
goal: {state: {lifecycle_stage_in: [customer]}, exit: won}
steps:
  - {id: to-lead, update: {lifecycle_stage: lead}}
  - {id: pause, wait: 7h}
  - id: nudge
    send: {channel: EMAIL, template: nudge}
  - {id: done, exit: done}
exits:
  won: {tag: won}
  done: {tag: done}
"""


def marks(entries: list[dict[str, Any]], contact_id: str) -> list[tuple[str, ...]]:
    """The journey marks on a contact's entries at steps (not its exit state's actions)."""
    keys = ("arrived", "outcome", "in_step_s")
    return [
        (e["decision"], e["inputs"]["step"], *(e["inputs"].get(k, "") for k in keys))
        for e in entries
        if e["contact_id"] == contact_id
        and not e["inputs"].get("step", "exit-").startswith("exit-")
    ]


def test_every_stay_is_marked_once_at_arrival_and_once_when_it_ends(tmp_path: Path) -> None:
    j = Journeys(library(tmp_path, STAGE_UP))
    j.contact("quiet")
    j.contact("won")
    for c in ("quiet", "won"):
        j.states[c] = j.states[c].model_copy(update={"lifecycle_stage": "lead"})
        j.event(c, "FORM_SUBMITTED", T0)  # Monday 15:00 UTC
    j.wait_over("quiet", "stage-up")  # 22:00: quiet hours until 08:00
    j.wait_over("quiet", "stage-up")  # 08:00: sent
    j.states["won"] = j.states["won"].model_copy(update={"lifecycle_stage": "customer"})
    j.wait_over("won", "stage-up")
    # Already a lead: the update step changes nothing, and still says it was taken.
    # The send held for quiet hours is one stay of ten hours, ended by the send.
    assert marks(j.entries, "quiet") == [
        ("workflow_step", "to-lead", "true", "progressed", ""),
        ("workflow_waiting", "pause", "true", "", ""),
        ("workflow_waited", "pause", "", "progressed", str(7 * 3600)),
        ("workflow_deferred", "nudge", "true", "", ""),
        ("workflow_sent", "nudge", "", "progressed", str(10 * 3600)),
        ("workflow_exited", "done", "true", "finished", ""),
    ]
    # The goal holds as the run reaches nudge: it arrived there, and converted there.
    assert marks(j.entries, "won")[-2:] == [
        ("workflow_waited", "pause", "", "progressed", str(7 * 3600)),
        ("workflow_exited", "nudge", "true", "converted", ""),
    ]
    [funnel] = funnels(j.entries, T0 + timedelta(days=1)).values()
    assert funnel.steps["nudge"].times == [10 * 3600]
    assert (funnel.steps["nudge"].progressed, funnel.steps["nudge"].converted) == (1, 1)
