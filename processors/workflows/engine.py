"""The workflow engine: what a contact's workflow runs do when something happens to the
contact, and when one of their waits is over.

Pure: ``Engine.on_event`` and ``Engine.on_due`` take the contact's ``RunBook`` (its runs,
its workflow history and its recent sends) and state, and return the new book, the new
state and the effects (messages, CRM commands, audit entries) in order. The contact stage
keeps the book in a table and sends the effects; ``switchboard workflows simulate`` runs
the same engine over a scripted timeline without Kafka.

Shared state across workflows, so that collisions cannot happen:
- a contact is in a workflow at most once at a time, and enters again only as its
  ``reentry`` allows;
- of a ``group``, one workflow at a time: a higher ``priority`` takes the contact (the
  other run exits ``preempted``), an equal or lower one does not enter;
- before every send to the contact: consent and address, quiet hours on their clock (the
  send waits for the end), and the frequency cap per channel across all workflows;
- stages only move forward (lifecycle stages in the policies' order, deal stages in the
  pipeline's), and every message has an id fixed by its run and step, so a replay or a
  retry sends nothing twice.

A call is a pass built in layers, a module each: passes.py (one call's copies and
effects), actions.py (what a step does), membership.py (entering and leaving), waits.py
(waits and their end); the top layer, here, takes the steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.journeys import DIVERTED
from processors.matching import payload_matches
from processors.pipeline import PipelineRules
from processors.sla import EPOCH, to_ms
from processors.state import ContactState
from processors.workflows.definitions import MERGED, Workflow
from processors.workflows.effects import Audit, Outcome
from processors.workflows.library import Library
from processors.workflows.runbook import History, Run, RunBook
from processors.workflows.steps import Step
from processors.workflows.waits import Waits


class Engine:
    def __init__(
        self,
        library: Library,
        pipeline: PipelineRules | None = None,
        triggered: set[str] | None = None,
    ) -> None:
        self.library = library
        self.pipeline = pipeline  # the deal stage order; None: any move is forward
        self.triggered = triggered  # the workflows events may start (None: all)
        # Event type -> the workflows whose trigger names it, in the library's order, with
        # the payload conditions of its matches of that type (none: any payload).
        self._by_type: dict[str, list[tuple[Workflow, list[dict[str, Any]]]]] = {}

    def on_event(
        self, book: RunBook, state: ContactState, event: dict[str, Any], now: datetime
    ) -> Outcome:
        """``event`` happened to the contact (``state`` is after it): goals, waits for
        events, and the workflows it triggers."""
        payload = event["payload"]
        triggered = [
            w
            for w, whens in self._may_trigger(event["event_type"])
            if not whens or any(payload_matches(payload, when) for when in whens)
        ]
        if not triggered and not any(self._concerns(r, event) for r in book.runs.values()):
            return Outcome(book, state)  # most events: nothing to copy, nothing to do
        run = _Pass(self.library, self.pipeline, book, state, now, event["event_id"])
        for name in sorted(run.book.runs):
            current = run.book.runs.get(name)
            if current is not None:
                run.wake(current, event)
        for workflow in triggered:
            run.enrol(workflow, event["event_time"], event)
        return run.finish()

    def _may_trigger(self, event_type: str) -> list[tuple[Workflow, list[dict[str, Any]]]]:
        """The workflows an event of ``event_type`` may start (most types start none), each
        with the payload conditions one of which it must meet (none: it starts them all):
        sorting the library and matching every trigger at every event was a measurable
        part of a worker's time."""
        found = self._by_type.get(event_type)
        if found is None:
            found = self._by_type[event_type] = []
            for w in self.library.workflows():
                whens = [m.when for m in w.trigger if m.event == event_type]
                if whens and (self.triggered is None or w.name in self.triggered):
                    # A match without conditions starts it whatever the payload.
                    found.append((w, [] if not all(whens) else whens))
        return found

    def _concerns(self, run: Run, event: dict[str, Any]) -> bool:
        """Whether ``event`` may move ``run``: its goal, what its step waits for, or a
        goal on the contact's state (which the event may have changed)."""
        flow = self.library.of(run)
        if flow is None or flow.goal.state is not None:
            return True
        if event["event_type"] not in flow.heard:
            return False  # most events: neither its goal nor any of its waits names them
        if any(m.matches(event) for m in flow.goal.events):
            return True
        step = flow.step(run.step)
        return step is not None and any(m.matches(event) for m in step.wait_for or [])

    def on_due(
        self,
        book: RunBook,
        state: ContactState,
        workflow: str,
        due_at: datetime,
        seq: int,
        now: datetime,
    ) -> Outcome:
        """A wait of the contact's run through ``workflow`` is over. A notice that no
        longer matches the run (a duplicate, or the run moved on) changes nothing."""
        current = book.runs.get(workflow)
        stale = (
            current is None
            or current.seq != seq
            or current.waiting_until is None
            or to_ms(current.waiting_until) != to_ms(due_at)
        )
        if stale or current is None:
            return Outcome(book, state)
        run = _Pass(self.library, self.pipeline, book, state, now, current.cause)
        run.resume(run.book.runs[workflow], due_at)
        return run.finish()

    def adopt(
        self, book: RunBook, state: ContactState, retired: RunBook, retired_id: str, now: datetime
    ) -> Outcome:
        """The survivor of a merge takes over the retired contact's runs. Where both are
        in one workflow, the run that started first goes on; the other exits ``merged``."""
        run = _Pass(self.library, self.pipeline, book, state, now, f"merge:{retired_id}")
        for name, theirs in sorted(retired.runs.items()):
            ours = run.book.runs.get(name)
            if ours is not None and ours.entered_at <= theirs.entered_at:
                run.audit_for(
                    theirs,
                    "workflow_exited",
                    f"{name}: {MERGED}: {state.contact_id} was already in it",
                    {
                        "exit": MERGED,
                        "from": retired_id,
                        "step": theirs.step,
                        "outcome": DIVERTED,
                        "why": MERGED,
                        **run.in_step(theirs),
                    },
                )
                continue
            if ours is not None:
                run.exit(ours, MERGED, f"{retired_id} had been in it longer")
            run.book.runs[name] = theirs.model_copy()
            run.audit_for(
                theirs,
                "workflow_adopted",
                f"{name}: the run of {retired_id} goes on here (merged)",
                {"from": retired_id, "step": theirs.step},
            )
        for name, theirs_h in retired.history.items():
            ours_h = run.book.history.get(name)
            if ours_h is None:
                run.book.history[name] = theirs_h.model_copy()
                continue
            last = max((ours_h, theirs_h), key=lambda h: h.exited_at or EPOCH)
            run.book.history[name] = History(
                runs=ours_h.runs + theirs_h.runs, last_exit=last.last_exit, exited_at=last.exited_at
            )
        for channel, sent in retired.sends.items():
            run.book.sends[channel] = sorted({*run.book.sends.get(channel, []), *sent})
        run.settle_groups(retired_id)
        return run.finish()


class _Pass(Waits):
    """One call into the engine (passes.py), with every family of step; it takes the
    steps: one after another until the run waits or exits, and the branches."""

    def advance(self, run: Run, workflow: Workflow) -> None:
        """Take steps until the run waits or exits (lint rules out loops)."""
        for _ in range(len(workflow.steps) + 1):
            if run.workflow not in self.book.runs or self.book.runs[run.workflow] is not run:
                return  # it exited (preempted by a hand-off it made, say)
            # A send held for quiet hours is tried again: the same stay at the step.
            arriving = run.since is None
            start = len(self.effects)
            if self.check_goal_state(run, workflow):
                self._mark(run, run.step, start, arriving, False)
                return
            step = workflow.step(run.step)
            assert step is not None
            run.seq += 1
            following = self.take(run, workflow, step)
            self._mark(run, step.id, start, arriving, following is not None)
            if following is None:
                return
            run.step = following
        raise RuntimeError(f"{workflow.name}: steps loop (lint should have refused it)")

    def _mark(self, run: Run, step: str, start: int, arriving: bool, moved_on: bool) -> None:
        """Mark the audit entries of a stay at ``step`` written since ``start``: the first
        ``arrived``; the last, when the run moved on, with how (journey KPIs)."""
        first: Audit | None = None
        last: Audit | None = None
        suppressed: str | None = None
        for effect in self.effects[start:]:  # the few this step wrote
            if not isinstance(effect, Audit):
                continue
            if effect.inputs.get("step") == step and effect.inputs.get("run_id") == run.run_id:
                first = first or effect
                last = effect
                suppressed = suppressed or effect.suppressed
        if first is None or last is None:
            return  # unreachable: every step writes an entry (an update without change too)
        if arriving:
            first.inputs["arrived"] = "true"
        if moved_on:
            last.inputs.update(self.left(run, suppressed))

    def take(self, run: Run, workflow: Workflow, step: Step) -> str | None:
        """Take one step; the next step, or None when the run now waits or has exited."""
        kind = step.kind
        if kind == "send":
            if not self.send(run, workflow, step):
                return None  # waits for the end of quiet hours
        elif kind == "notify":
            assert step.notify is not None
            self.notify(run, step.notify, step.id)
        elif kind == "task":
            self.task(run, step)
        elif kind == "update":
            self.update_step(run, step)
        elif kind in ("wait", "wait_until", "wait_for"):
            self.wait(run, step)
            return None
        elif kind == "branch":
            return self.branch(run, step)
        else:
            assert step.exit is not None
            self.exit(run, step.exit, f"reached {step.id}")
            return None
        return workflow.successor(step.id)

    def branch(self, run: Run, step: Step) -> str:
        running = set(self.book.runs)
        values: dict[str, str] = {}
        for i, case in enumerate(step.branch or []):
            held, seen = case.when.evaluate(self.state, running, run.trigger, self.ran())
            values |= {f"case{i + 1}.{k}": v for k, v in seen.items()}
            if held:
                self._branch_audit(run, step, f"case {i + 1} holds", case.goto, values)
                return case.goto
        assert step.otherwise is not None
        self._branch_audit(run, step, "no case holds", step.otherwise, values)
        return step.otherwise

    def _branch_audit(
        self, run: Run, step: Step, why: str, goto: str, values: dict[str, str]
    ) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        self.audit_for(
            run,
            "workflow_branch",
            f"{run.workflow}: {step.id}: {why} ({shown}) -> {goto}",
            {"step": step.id, "goto": goto, **values},
        )
