"""Who is in which workflow: a contact enters a workflow when its trigger, re-entry
policy, entry filter and group allow (a higher ``priority`` of a ``group`` takes the
contact from a lower one), goes on with its version or migrates to the current one, and
leaves in an exit state (its tag, stages, notification and hand-off), when a step says
so, when its goal is met, or when the engine takes it off (preempted, merged,
version_removed). Every refusal is an audit entry that says why."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.ids import decision_id
from processors.journeys import CONVERTED, DIVERTED, FINISHED
from processors.matching import scalars
from processors.workflows.actions import Actions
from processors.workflows.definitions import (
    BUILTIN_EXITS,
    PREEMPTED,
    VERSION_REMOVED,
    Workflow,
)
from processors.workflows.runbook import History, Run
from processors.workflows.steps import Update


class Membership(Actions):
    """A pass that can enter a contact into a workflow and take it out."""

    # -- entering -----------------------------------------------------------------------

    def enrol(
        self,
        workflow: Workflow,
        triggered_at: datetime,
        event: dict[str, Any] | None,
        handed_from: str | None = None,
    ) -> None:
        """The contact enters ``workflow`` if the trigger's age, its re-entry policy, the
        entry filter and the group allow; else an audited refusal says which did not."""
        if not self._may_try(workflow, triggered_at, handed_from):
            return
        name = workflow.name
        trigger = scalars(event["payload"]) if event else {}
        held, seen = workflow.entry.evaluate(self.state, set(self.book.runs), trigger, self.ran())
        if not held:
            self.refuse(workflow, "entry_filter", "the entry filter does not hold", seen)
            return
        rivals = self._group_runs(workflow)
        for rival, rival_flow in rivals:
            if rival_flow.priority >= workflow.priority:
                self.refuse(
                    workflow,
                    "group",
                    f"in {rival.workflow} of group {workflow.group} (priority "
                    f"{rival_flow.priority} >= {workflow.priority})",
                    {"group": workflow.group, "rival": rival.workflow},
                )
                return
        history = self.book.history.setdefault(name, History())
        history.runs += 1
        run = Run(
            workflow=name,
            version=workflow.version,
            run_id=decision_id("run", self.state.contact_id, name, self.cause, str(history.runs)),
            step=workflow.steps[0].id,
            entered_at=self.now,
            cause=self.cause,
            trigger=scalars(event["payload"]) if event else {},
        )
        # Entered (in the book, and in the audit) before the rivals leave, so that a
        # rival's hand-off into this group finds the group taken.
        self.book.runs[name] = run
        how = (
            f"handed off by {handed_from}"
            if handed_from
            else (f"{event['event_type'].lower().replace('_', ' ')}" if event else "entered")
        )
        self.audit_for(
            run,
            "workflow_entered",
            f"{name} v{workflow.version}: {how}; entry filter holds",
            {**seen, "purpose": workflow.purpose},
        )
        for rival, _ in rivals:
            self.exit(
                rival,
                PREEMPTED,
                f"{name} (priority {workflow.priority}) of group {workflow.group} takes "
                "the contact",
            )
        if self.book.runs.get(name) is not run:
            return  # a rival's hand-off took the contact from it in turn
        self.advance(run, workflow)

    def _may_try(self, workflow: Workflow, triggered_at: datetime, handed_from: str | None) -> bool:
        """Whether the contact may try to enter ``workflow`` now: the trigger is recent (a
        hand-off always is), it is not in it already, and its re-entry policy allows."""
        name = workflow.name
        if handed_from is None and self.now - triggered_at > self.policies.max_trigger_age:
            self.refuse(
                workflow,
                "trigger_too_old",
                f"the trigger happened at {triggered_at:%Y-%m-%d %H:%M}Z, longer ago "
                f"than max_trigger_age",
                {"triggered_at": triggered_at.isoformat()},
            )
            return False
        running = self.book.runs.get(name)
        if running is not None:
            self.refuse(
                workflow,
                "already_in",
                f"already in it, at {running.step} since {running.entered_at:%Y-%m-%d %H:%M}Z",
                {"step": running.step},
            )
            return False
        history = self.book.history.get(name)
        if history is not None and history.runs:
            after = workflow.reentry_after
            if after is None:
                self.refuse(
                    workflow,
                    "reentry",
                    "went through it before and reentry is never",
                    {"last_exit": history.last_exit},
                )
                return False
            if history.exited_at is not None and self.now < history.exited_at + after:
                self.refuse(
                    workflow,
                    "reentry",
                    f"left it at {history.exited_at:%Y-%m-%d %H:%M}Z; may enter again "
                    f"{workflow.reentry} after",
                    {"last_exit": history.last_exit},
                )
                return False
        return True

    def _group_runs(self, workflow: Workflow) -> list[tuple[Run, Workflow]]:
        if workflow.group is None:
            return []
        found = []
        for run in list(self.book.runs.values()):
            flow = self.library.of(run)
            if flow is not None and flow.group == workflow.group:
                found.append((run, flow))
        return found

    def settle_groups(self, retired_id: str) -> None:
        """After a merge, one run per group again: the highest priority goes on, the
        others exit ``preempted`` as if it had taken the contact."""
        for run in list(self.book.runs.values()):
            if run.workflow not in self.book.runs:
                continue
            flow = self.library.of(run)
            if flow is None:
                continue
            for rival, rival_flow in self._group_runs(flow):
                if rival is not run and rival_flow.priority < flow.priority:
                    self.exit(
                        rival,
                        PREEMPTED,
                        f"merged with {retired_id}: {flow.name} "
                        f"(priority {flow.priority}) of group {flow.group} goes on",
                    )

    # -- staying in: on which version, until the goal holds ----------------------------

    def definition(self, run: Run) -> Workflow | None:
        """The version the run goes on with, migrating it to the current one when that
        version says so (or when its own is gone); None if it has to stop."""
        current = self.library.current(run.workflow)
        if current is not None and current.version == run.version:
            return current
        own = self.library.version(run.workflow, run.version)
        if current is not None and (current.on_new_version == "migrate" or own is None):
            target = current.migrate_steps.get(run.step, run.step)
            if current.step(target) is not None:
                before = f"v{run.version} {run.step}"
                run.version, run.step = current.version, target
                self.audit_for(
                    run,
                    "workflow_migrated",
                    f"{run.workflow}: {before} -> v{current.version} {target}",
                    {"from": before, "step": target},
                )
                return current
        if own is not None:
            return own  # finishes on the version it started on
        self.exit(
            run,
            VERSION_REMOVED,
            f"version {run.version} is no longer published and "
            f"step {run.step} has no place in the current one",
        )
        return None

    def check_goal_state(self, run: Run, workflow: Workflow) -> bool:
        """Whether the goal's state holds now; the run exits in the goal's exit if so."""
        goal = workflow.goal
        if goal.state is None:
            return False
        held, seen = goal.state.evaluate(self.state, set(self.book.runs), run.trigger, self.ran())
        if held:
            self.exit(run, goal.exit, "goal met: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
        return held

    # -- leaving ------------------------------------------------------------------------

    def exit(self, run: Run, exit_name: str, reason: str) -> None:
        name = run.workflow
        self.book.runs.pop(name, None)
        run.waiting_until = None
        history = self.book.history.setdefault(name, History(runs=1))
        history.last_exit, history.exited_at = exit_name, self.now
        workflow = self.library.of(run)
        state = workflow.exits.get(exit_name) if workflow else None
        if workflow is not None and exit_name == workflow.goal.exit:
            marks: dict[str, Any] = {"outcome": CONVERTED}
        elif exit_name in BUILTIN_EXITS:
            marks = {"outcome": DIVERTED, "why": exit_name}
        else:
            marks = {"outcome": FINISHED}
        self.audit_for(
            run,
            "workflow_exited",
            f"{name}: {exit_name}: {reason}",
            {
                "exit": exit_name,
                "step": run.step,
                "took_s": int((self.now - run.entered_at).total_seconds()),
                **marks,
                **self.in_step(run),
            },
        )
        if state is None:
            return
        where = f"exit-{exit_name}"
        properties: dict[str, str] = {}
        if state.tag is not None and state.tag not in self.state.tags:
            self.state.tags = [*self.state.tags, state.tag]
            properties["workflow_tags"] = ",".join(self.state.tags)
        if properties or state.lifecycle_stage is not None or state.deal_stage is not None:
            update = Update(
                properties=properties,
                lifecycle_stage=state.lifecycle_stage,
                deal_stage=state.deal_stage,
            )
            self.update(run, update, where)
        if state.notify is not None:
            self.notify(run, state.notify, where, exit=exit_name, reason=reason)
        if state.hand_off is not None:
            target = self.library.current(state.hand_off)
            if target is not None:
                self.enrol(target, self.now, None, handed_from=name)
