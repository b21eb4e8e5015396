"""The contact stage's workflow runs: the ``workflow-runs`` table, this worker's schedule
of their waits, and what the stage does when something happens to a contact, when a wait
is over, and when two contacts merge.

The engine is pure (processors.workflows.engine); this module keeps its state in the
table (a processors.timers.TimerTable, which keeps the schedule in step with it) and
sends what it decides. Waits are durable timers like the SLA clocks': a due notice on
the ``timers`` topic, fired in the contact stage's own step, ignored when it no longer
matches the run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, get_args

from processors import timers
from processors.journeys import DIVERTED, OPT_OUTS, OUTCOMES, UNSUBSCRIBED
from processors.records.workflows import workflow_outputs
from processors.state import ContactState
from processors.workflows.definitions import BUILTIN_EXITS
from processors.workflows.effects import Audit, Outcome, SuppressedBecause
from processors.workflows.engine import Engine as WorkflowEngine
from processors.workflows.library import Library
from processors.workflows.runbook import TIMER_PREFIX, RunBook, timer_key
from processors.workflows.steps import WAITING_KINDS
from streams import metrics
from streams.clock import Clock
from streams.engine import Engine, Output
from streams.settings import Settings


def stored_waits(items: Iterable[tuple[str, str]], owned: set[int]) -> timers.Entries:
    """The waiting runs in the table's (contact id, RunBook JSON) items on the ``owned``
    partitions; plain JSON, as a worker may hold millions."""
    for contact_id, stored in items:
        book = json.loads(stored)
        partition = book["partition"]
        if partition not in owned:
            continue
        for name, run in book.get("runs", {}).items():
            if run.get("waiting_until"):
                due = datetime.fromisoformat(run["waiting_until"])
                yield contact_id, timer_key(name), due, run.get("seq", 0), partition


class WorkflowRuns(timers.TimerTable[RunBook]):
    def __init__(
        self,
        runtime: Engine,
        settings: Settings,
        engine: WorkflowEngine,
        clock: Clock,
    ) -> None:
        # Each contact's RunBook (JSON).
        super().__init__(
            runtime, settings, clock, "workflow-runs", RunBook, stored_waits, "workflow"
        )
        self.engine = engine
        declare_workflows(engine.library)

    def timers_of(self, book: RunBook) -> dict[str, tuple[datetime, int]]:
        return {
            timer_key(name): (run.waiting_until, run.seq)
            for name, run in book.runs.items()
            if run.waiting_until is not None
        }

    def kept(self, book: RunBook) -> bool:
        return bool(book.runs or book.history)

    @staticmethod
    def is_wait(timer_id: str) -> bool:
        return timer_id.startswith(TIMER_PREFIX)

    def on_event(
        self, state: ContactState, event: dict[str, Any], partition: int
    ) -> tuple[ContactState, list[Output]]:
        """Goals, waits for events and the workflows ``event`` triggers; the contact's
        state after the runs' actions (tags, stages, memberships), and what they send."""
        book = self.load(state.contact_id)
        outcome = self.engine.on_event(book, state, event, self.clock.now())
        return self._apply(state, book, outcome, partition)

    def on_due(
        self, contact_id: str, notice: dict[str, Any], partition: int, state: ContactState
    ) -> tuple[ContactState, list[Output]]:
        book = self.load(contact_id)
        name = notice["timer_id"].removeprefix(TIMER_PREFIX)
        now = self.clock.now()
        outcome = self.engine.on_due(
            book, state, name, notice["due_at"], notice["escalation_level"], now
        )
        if outcome.changed:
            metrics.TIMERS_FIRED.labels(policy=timer_key(name)).inc()
            metrics.TIMER_LATENESS.labels(policy=timer_key(name)).observe(
                max((now - notice["due_at"]).total_seconds(), 0.0)
            )
        return self._apply(state, book, outcome, partition)

    def adopt(
        self, state: ContactState, retired: str, stored: str, partition: int
    ) -> tuple[ContactState, list[Output]]:
        """The survivor of a merge takes over the retired contact's runs."""
        book = self.load(state.contact_id)
        theirs = RunBook.model_validate_json(stored)
        outcome = self.engine.adopt(book, state, theirs, retired, self.clock.now())
        return self._apply(state, book, outcome, partition)

    def _apply(
        self, state: ContactState, before: RunBook, outcome: Outcome, partition: int
    ) -> tuple[ContactState, list[Output]]:
        """Store, schedule and count what the engine decided; the contact's state after it
        (``state`` itself when nothing happened) and what it sends."""
        if not outcome.changed:
            return state, []
        self.save(outcome.state.contact_id, before, outcome.book, partition)
        _count(outcome)
        return outcome.state, workflow_outputs(outcome.state, outcome.effects, self.clock.now())


def _count(outcome: Outcome) -> None:
    for effect in outcome.effects:
        if not isinstance(effect, Audit):
            continue
        workflow = effect.workflow
        if "arrived" in effect.inputs or "outcome" in effect.inputs:
            _count_journey(workflow, effect.inputs)
        if effect.decision == "workflow_entered":
            metrics.labelled(metrics.WORKFLOW_ENROLMENTS, workflow).inc()
        elif effect.decision == "workflow_exited":
            metrics.labelled(metrics.WORKFLOW_EXITS, workflow, effect.inputs["exit"]).inc()
        elif effect.suppressed is not None:
            metrics.labelled(metrics.WORKFLOW_SUPPRESSIONS, workflow, effect.suppressed).inc()
        elif effect.decision in ("workflow_sent", "workflow_step", "workflow_branch"):
            metrics.labelled(metrics.WORKFLOW_STEPS, workflow, effect.decision).inc()


# What may take a run off its path at a step of a kind, besides the engine's own exits
# at the steps a run waits at.
_DIVERSIONS: dict[str, tuple[str, ...]] = {
    "send": ("consent", "frequency_cap"),
    "notify": ("no_recipient",),
    "update": ("backwards",),
}
# (workflow, step) -> seconds a run is expected to stay there, of the loaded workflows.
_EXPECTED: dict[tuple[str, str], float] = {}


def _count_journey(workflow: str, inputs: dict[str, Any]) -> None:
    """The journey marks of an audit entry (processors.journeys) as metrics."""
    step = str(inputs.get("step"))
    if "arrived" in inputs:
        metrics.labelled(metrics.JOURNEY_STEPS, workflow, step, "entered").inc()
    done = inputs.get("outcome")
    if done is None:
        return
    metrics.labelled(metrics.JOURNEY_STEPS, workflow, step, done).inc()
    if done == DIVERTED:
        metrics.labelled(metrics.JOURNEY_DIVERSIONS, workflow, step, inputs["why"]).inc()
    waited = inputs.get("in_step_s")
    if waited is not None:
        metrics.labelled(metrics.JOURNEY_STEP_SECONDS, workflow, step).observe(waited)
        limit = _EXPECTED.get((workflow, step))
        if limit is not None and waited > limit:
            metrics.labelled(metrics.JOURNEY_STEPS, workflow, step, "stalled").inc()


def declare_workflows(library: Library) -> None:
    decisions = ("workflow_sent", "workflow_step", "workflow_branch")
    for flow in library.workflows():
        name = {"workflow": flow.name}
        metrics.declare(metrics.WORKFLOW_ENROLMENTS, [name])
        metrics.declare(metrics.WORKFLOW_EXITS, ({**name, "exit": e} for e in flow.exit_names()))
        metrics.declare(metrics.WORKFLOW_STEPS, ({**name, "decision": d} for d in decisions))
        reasons = get_args(SuppressedBecause)
        metrics.declare(metrics.WORKFLOW_SUPPRESSIONS, ({**name, "reason": r} for r in reasons))
        for timer in (metrics.TIMERS_FIRED, metrics.TIMER_LATENESS):
            metrics.declare(timer, [{"policy": timer_key(flow.name)}])
        for step in flow.steps:
            at = {**name, "step": step.id}
            outcomes = ("entered", *OUTCOMES, "stalled")
            metrics.declare(metrics.JOURNEY_STEPS, ({**at, "outcome": o} for o in outcomes))
            reasons = _DIVERSIONS.get(step.kind, ())
            if step.kind in WAITING_KINDS:
                reasons += BUILTIN_EXITS
            if any(m.event in OPT_OUTS for m in step.wait_for or []):
                reasons += (UNSUBSCRIBED,)
            metrics.declare(metrics.JOURNEY_DIVERSIONS, ({**at, "reason": r} for r in reasons))
            limit = library.expected(flow, step.id)
            if limit is not None:
                _EXPECTED[(flow.name, step.id)] = limit.total_seconds()
                metrics.declare(metrics.JOURNEY_STEP_SECONDS, [at])
