"""The actions a workflow step takes: a message to the contact (``send``: consent,
quiet hours on their clock, the frequency cap across workflows), a message to a person
(``notify``), a CRM task (``task``), and CRM fields and stages (``update``: stages only
move forward). Each writes its effect and its audit entry, with an id fixed by the run
and step, so a replay or a retry sends nothing twice."""

from __future__ import annotations

from string import Template
from typing import Any

from processors.durations import format_duration
from processors.ids import decision_id
from processors.pipeline import current_deal
from processors.state import CLOSED_STAGES
from processors.workflows.contact_time import contact_zone, quiet_until
from processors.workflows.definitions import Workflow
from processors.workflows.effects import DealStage, Message, Task, Upsert
from processors.workflows.passes import PassBase
from processors.workflows.runbook import Run
from processors.workflows.steps import Notify, Step, Update


class Actions(PassBase):
    """A pass that can take the action steps (and an exit's actions)."""

    def task(self, run: Run, step: Step) -> None:
        """A CRM task for the contact's owner (and a job record beside it, if asked)."""
        name = run.workflow
        task = step.task
        assert task is not None
        task_id = decision_id("wf-task", run.run_id, step.id)
        context = self.context(run, step.id)
        title = Template(task.title).safe_substitute(context)
        notes = Template(task.notes).safe_substitute(context) if task.notes else None
        self.effects.append(
            Task(
                task_id,
                title,
                self.now + task.due_in,
                task.priority,
                notes,
                run.cause,
                task.job,
                context.get("job_id") if task.job else None,
            )
        )
        self.audit_for(
            run,
            "workflow_step",
            f"{name}: {step.id}: task {title!r}",
            {"step": step.id, "action": "task", "task_id": task_id},
        )

    def update_step(self, run: Run, step: Step) -> None:
        """Fields and stages to set; an entry all the same when nothing changes."""
        name = run.workflow
        assert step.update is not None
        before = len(self.effects)
        self.update(run, step.update, step.id)
        if len(self.effects) == before:  # an entry all the same: the step was taken
            self.audit_for(
                run,
                "workflow_step",
                f"{name}: {step.id}: nothing to change (the contact is there already)",
                {"step": step.id, "action": "update", "changed": False},
            )

    def send(self, run: Run, workflow: Workflow, step: Step) -> bool:
        """Send to the contact if they may be sent it; False when it waits for the end of
        quiet hours (the run stays on the step)."""
        send = step.send
        assert send is not None
        name = workflow.name
        inputs: dict[str, Any] = {
            "step": step.id,
            "channel": send.channel,
            "template": send.template,
        }
        address, problem = self.state.address(send.channel)
        if address is None:
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{name}: {step.id}: {send.template} by {send.channel} not sent: {problem}",
                inputs,
                "consent",
            )
            return True
        quiet = self.policies.quiet_hours
        if quiet is not None:
            zone = contact_zone(self.state, self.policies.timezone)
            until = quiet_until(self.now, quiet, zone)
            if until is not None:
                run.waiting_until = until
                run.since = run.since or self.now
                self.audit_for(
                    run,
                    "workflow_deferred",
                    f"{name}: {step.id}: quiet hours on the contact's clock ({zone}); "
                    f"sends at {until:%Y-%m-%d %H:%M}Z",
                    self.expected(run, step, {**inputs, "until": until.isoformat()}),
                )
                return False
        cap = self.policies.frequency_caps.get(send.channel)
        recent = self.book.sends.get(send.channel, [])
        if cap is not None:
            recent = [at for at in recent if at > self.now - cap.per]
            if len(recent) >= cap.max:
                self.audit_for(
                    run,
                    "workflow_suppressed",
                    f"{name}: {step.id}: {send.template} by {send.channel} not sent: "
                    f"the contact had {len(recent)} in {format_duration(cap.per)} (cap {cap.max})",
                    inputs,
                    "frequency_cap",
                )
                return True
            self.book.sends[send.channel] = [*recent, self.now]
        notification_id = decision_id("wf-send", run.run_id, step.id)
        self.effects.append(
            Message(
                notification_id,
                send.channel,
                address,
                send.template,
                send.subject,
                self.context(run, step.id),
                run.cause,
                True,
            )
        )
        self.audit_for(
            run,
            "workflow_sent",
            f"{name}: {step.id}: {send.template} by {send.channel}",
            {**inputs, "notification_id": notification_id},
        )
        return True

    def notify(self, run: Run, notify: Notify, step: str, **extra: str) -> None:
        state = self.state
        recipient: str | None = {"owner": state.owner_email, "manager": state.manager_email}.get(
            notify.to, notify.to
        )
        inputs = {"step": step, "to": notify.to, "template": notify.template}
        if recipient is None:
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: "
                f"{notify.template} not sent: no e-mail known for the {notify.to}",
                inputs,
                "no_recipient",
            )
            return
        notification_id = decision_id("wf-notify", run.run_id, step)
        self.effects.append(
            Message(
                notification_id,
                notify.channel,
                recipient,
                notify.template,
                None,
                self.context(run, step) | extra,
                run.cause,
                False,
            )
        )
        self.audit_for(
            run,
            "workflow_step",
            f"{run.workflow}: {step}: {notify.template} to the {notify.to} by {notify.channel}",
            {**inputs, "action": "notify", "notification_id": notification_id},
        )

    def update(self, run: Run, update: Update, step: str) -> None:
        properties = dict(update.properties)
        if update.lifecycle_stage is not None:
            properties |= self._lifecycle(run, update.lifecycle_stage, step)
        if properties:
            command_id = decision_id("wf-update", run.run_id, step)
            self.effects.append(Upsert(command_id, properties, run.cause))
            self.audit_for(
                run,
                "workflow_step",
                f"{run.workflow}: {step}: set "
                + ", ".join(f"{k}={v}" for k, v in properties.items()),
                {"step": step, "action": "update", **properties},
            )
        if update.deal_stage is not None:
            self._deal_stage(run, update.deal_stage, step)

    def _lifecycle(self, run: Run, target: str, step: str) -> dict[str, str]:
        order = self.policies.lifecycle_stages
        current = self.state.lifecycle_stage
        if current == target:
            return {}
        if current in order and order.index(target) < order.index(current):
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: lifecycle stage "
                f"stays {current}: {target} would move the contact back",
                {"step": step, "stage": target, "current": current},
                "backwards",
            )
            return {}
        self.state.lifecycle_stage = target
        return {"lifecyclestage": target}

    def _deal_stage(self, run: Run, target: str, step: str) -> None:
        deals = self.state.open_deals
        inputs = {"step": step, "stage": target}
        if not deals:
            self.audit_for(
                run,
                "workflow_step",
                f"{run.workflow}: {step}: no open deal to move to {target}",
                {**inputs, "action": "deal_stage", "moved": False},
            )
            return
        deal = current_deal(deals)
        if deal.stage == target:
            return
        if self.pipeline is not None and not self.pipeline.is_forward(deal.stage, target):
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: deal "
                f"{deal.deal_id} stays {deal.stage}: {target} would move it back",
                {**inputs, "deal_id": deal.deal_id, "current": deal.stage},
                "backwards",
            )
            return
        if target in CLOSED_STAGES:
            del deals[deal.deal_id]
        else:
            deals[deal.deal_id] = deal.model_copy(update={"stage": target, "updated_at": self.now})
        command_id = decision_id("wf-deal", run.run_id, step, deal.deal_id)
        self.effects.append(DealStage(command_id, deal.deal_id, target, deal.stage, run.cause))
        self.audit_for(
            run,
            "workflow_step",
            f"{run.workflow}: {step}: deal {deal.deal_id} {deal.stage} -> {target}",
            {**inputs, "action": "deal_stage", "deal_id": deal.deal_id},
        )
