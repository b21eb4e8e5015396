"""Waits: a step that holds a run until a duration passes (``wait``), the contact's
clock shows a time of day (``wait_until``), or one of some events arrives (``wait_for``,
with a ``timeout`` and the step to take then, ``on_timeout``).

A wait is a durable timer (runbook.py): the run records when it is due, and the
contact stage's schedule sends a due notice then, which ``resume`` takes. An event that
reaches a run (``wake``) may meet its goal, or be what its ``wait_for`` waits for: the
run takes that event's ``goto`` at once. Every wait, and how it ended, is audited with
the marks of the run's stay at the step (processors.journeys)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from processors.durations import format_duration
from processors.journeys import OPT_OUTS, UNSUBSCRIBED
from processors.sla import whole_ms
from processors.workflows.contact_time import contact_zone, next_local
from processors.workflows.definitions import VERSION_REMOVED
from processors.workflows.membership import Membership
from processors.workflows.runbook import Run
from processors.workflows.steps import Step


class Waits(Membership):
    """A pass that can hold runs at their waits and end the waits."""

    def wait(self, run: Run, step: Step) -> None:
        """The run waits at ``step`` (a wait, wait_until or wait_for) until it is due."""
        if step.wait is not None:
            until = whole_ms(self.now + step.wait)
        elif step.wait_until is not None:
            zone = contact_zone(self.state, self.policies.timezone)
            until = next_local(self.now, step.wait_until.time, zone, step.wait_until.days)
        else:
            assert step.timeout is not None
            until = whole_ms(self.now + step.timeout)
        run.waiting_until = until
        run.since = self.now
        what = ", ".join(dict.fromkeys(m.event for m in step.wait_for or []))
        inputs: dict[str, Any] = {"step": step.id, "until": until.isoformat()}
        if what:
            inputs["waits_for"] = what
        self.expected(run, step, inputs)
        self.audit_for(
            run,
            "workflow_waiting",
            f"{run.workflow}: {step.id}: waits until {until:%Y-%m-%d %H:%M}Z"
            + (f" for {what}" if what else ""),
            inputs,
        )

    def wake(self, run: Run, event: dict[str, Any]) -> None:
        """An event reached a running run: its goal, or what it waits for."""
        workflow = self.definition(run)
        if workflow is None:
            return
        if any(m.matches(event) for m in workflow.goal.events):
            what = event["event_type"].lower().replace("_", " ")
            self.exit(run, workflow.goal.exit, f"goal met: {what}")
            return
        step = workflow.step(run.step)
        if step is not None and step.kind == "wait_for" and run.waiting_until is not None:
            listen = next((m for m in step.wait_for or [] if m.matches(event)), None)
            if listen is not None:
                waited = self.now - (run.waiting_until - (step.timeout or timedelta(0)))
                self.audit_for(
                    run,
                    "workflow_branch",
                    f"{run.workflow}: {step.id}: {event['event_type']} arrived -> {listen.goto}",
                    {
                        "step": step.id,
                        "event": event["event_type"],
                        "waited_s": int(waited.total_seconds()),
                        "goto": listen.goto,
                        **self.left(run, UNSUBSCRIBED if event["event_type"] in OPT_OUTS else None),
                    },
                )
                run.waiting_until = None
                run.step = listen.goto
                self.advance(run, workflow)
                return
        self.check_goal_state(run, workflow)

    def resume(self, run: Run, due_at: datetime) -> None:
        """The run's wait is over."""
        workflow = self.definition(run)
        if workflow is None:
            return
        lateness = max(self.now - due_at, timedelta(0))
        step = workflow.step(run.step)
        run.waiting_until = None
        if step is None:  # unreachable: definition() places the run on a known step
            self.exit(run, VERSION_REMOVED, f"no step {run.step}")
            return
        late = {"lateness_ms": int(lateness.total_seconds() * 1000)}
        if step.kind == "wait_for":
            assert step.timeout is not None
            self.audit_for(
                run,
                "workflow_branch",
                f"{run.workflow}: {step.id}: nothing within {format_duration(step.timeout)} -> "
                f"{step.on_timeout}",
                {
                    "step": step.id,
                    "timed_out": True,
                    "goto": step.on_timeout,
                    **late,
                    **self.left(run),
                },
            )
            assert step.on_timeout is not None
            run.step = step.on_timeout
        elif step.kind in ("wait", "wait_until"):
            self.audit_for(
                run,
                "workflow_waited",
                f"{run.workflow}: {step.id}: wait over",
                {"step": step.id, **late, **self.left(run)},
            )
            following = workflow.successor(step.id)
            assert following is not None
            run.step = following
        # a send waited out quiet hours: it is tried again
        self.advance(run, workflow)
