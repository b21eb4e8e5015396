"""One call into the workflow engine: copies of the contact's book and state that the
call changes, the effects in the order they happen, and what every family of step uses
(the audit entry, the marks of a stay at a step, the message context).

The families build on it in layers, each a module: actions.py (send, notify, task,
update), membership.py (entering, collisions, leaving), waits.py (waits and their end),
and engine.py, which takes the steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.ids import decision_id
from processors.journeys import DIVERTED, PROGRESSED
from processors.pipeline import PipelineRules
from processors.state import ContactState
from processors.workflows.definitions import Workflow
from processors.workflows.effects import Audit, Effect, Outcome, SuppressedBecause
from processors.workflows.library import Library
from processors.workflows.runbook import Run, RunBook
from processors.workflows.steps import Step


class PassBase:
    """One call into the engine: copies of the book and state it changes, and the
    effects in the order they happen (the bottom layer)."""

    def __init__(
        self,
        library: Library,
        pipeline: PipelineRules | None,
        book: RunBook,
        state: ContactState,
        now: datetime,
        cause: str,
    ) -> None:
        self.library = library
        self.policies = library.policies
        self.pipeline = pipeline
        self.before = (book, state)
        self.book = book.model_copy(deep=True)
        # A copy sharing with ``state`` only what a pass replaces rather than changes in
        # place (open deals are its one container changed in place); a deep copy of the
        # whole contact was the larger part of a pass.
        self.state = state.model_copy(update={"open_deals": dict(state.open_deals)})
        self.now = now
        self.cause = cause
        self.effects: list[Effect] = []

    def finish(self) -> Outcome:
        mirror = {n: f"v{r.version} {r.step}" for n, r in sorted(self.book.runs.items())}
        if mirror != self.state.workflows:
            self.state = self.state.model_copy(update={"workflows": mirror})
        changed = bool(self.effects) or (self.book, self.state) != self.before
        return Outcome(self.book, self.state, self.effects, changed)

    # -- audit --------------------------------------------------------------------------

    def audit_for(
        self,
        run: Run,
        decision: str,
        reason: str,
        inputs: dict[str, Any],
        suppressed: SuppressedBecause | None = None,
    ) -> None:
        audit_id = decision_id("wf-audit", run.run_id, str(run.seq), decision, reason)
        full = {"workflow": run.workflow, "version": run.version, "run_id": run.run_id, **inputs}
        self.effects.append(
            Audit(run.workflow, decision, reason, full, audit_id, self.cause, suppressed)
        )

    def refuse(
        self, workflow: Workflow, because: SuppressedBecause, reason: str, inputs: dict[str, Any]
    ) -> None:
        audit_id = decision_id("wf-refused", workflow.name, self.cause, because)
        self.effects.append(
            Audit(
                workflow.name,
                "workflow_not_entered",
                f"{workflow.name}: not entered: {reason}",
                {
                    "workflow": workflow.name,
                    "version": workflow.version,
                    "because": because,
                    **inputs,
                },
                audit_id,
                self.cause,
                because,
            )
        )

    def ran(self) -> set[str]:
        return {name for name, history in self.book.history.items() if history.runs}

    # -- a stay at a step -----------------------------------------------------------------

    def left(self, run: Run, diverted: str | None = None) -> dict[str, Any]:
        """The marks of the entry with which the run leaves its step along its path:
        ``diverted`` (why) when it was taken off it (an unsubscribe, a suppressed action)."""
        marks: dict[str, Any] = {"outcome": PROGRESSED}
        if diverted is not None:
            marks = {"outcome": DIVERTED, "why": diverted}
        return marks | self.in_step(run)

    def in_step(self, run: Run) -> dict[str, Any]:
        """How long the run waited at its step (nothing when it did not wait); its stay
        there ends."""
        since, run.since = run.since, None
        return {} if since is None else {"in_step_s": int((self.now - since).total_seconds())}

    def expected(self, run: Run, step: Step, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with the step's expected time, for a stall to be judged by."""
        workflow = self.library.of(run)
        limit = self.library.expected(workflow, step.id) if workflow else None
        if limit is not None:
            inputs["expected_s"] = int(limit.total_seconds())
        return inputs

    def context(self, run: Run, step: str) -> dict[str, str]:
        state = self.state
        return run.trigger | {
            "who": state.who(),
            "first_name": state.greeting_name(),
            "company": state.profile.get("company", ""),
            "contact_id": state.contact_id,
            "owner_id": state.owner_id or "",
            "workflow": run.workflow,
            "step": step,
        }

    def advance(self, run: Run, workflow: Workflow) -> None:
        """Take steps until the run waits or exits. Entering a workflow (membership.py)
        and ending a wait (waits.py) go on with it; engine.py, the top layer, takes them."""
        raise NotImplementedError
