"""What the pipeline rules' deal moves write: the deal's CRM commands, the owner's tasks
and messages, and the triggers a stage change gives SLA clocks and workflows."""

from __future__ import annotations

from typing import Any

from processors.ids import decision_id
from processors.pipeline import PipelineOutcome
from processors.records.base import audit_entry, crm_command, notification
from processors.state import ContactState
from streams.engine import Output


def deal_payload(
    deal_id: str, name: str, stage: str, amount_minor: int | None, currency: str | None
) -> dict[str, Any]:
    """A CREATE_DEAL's payload."""
    return {
        "deal_id": deal_id,
        "name": name,
        "stage": stage,
        "pipeline": None,
        "amount_minor": amount_minor,
        "currency": currency,
    }


def pipeline_outputs(
    state: ContactState, outcome: PipelineOutcome, event: dict[str, Any]
) -> list[Output]:
    """The commands, notifications and audit entries of the pipeline rules an event met."""
    contact_id, at, cause = state.contact_id, event["event_time"], event["event_id"]
    outputs: list[Output] = []

    def command(kind: str, command_id: str, payload: dict[str, Any]) -> None:
        outputs.append(crm_command(contact_id, kind, command_id, payload, at, cause))

    def audit(decision: str, reason: str, inputs: dict[str, Any]) -> None:
        entry = audit_entry(contact_id, "pipeline", decision, reason, inputs, [cause], at)
        outputs.append(("audit", contact_id, entry))

    for move in outcome.moves:
        if move.created:
            command(
                "CREATE_DEAL",
                decision_id("create-deal", contact_id, move.deal_id, cause),
                deal_payload(
                    move.deal_id,
                    move.deal_name or move.deal_id,
                    move.stage,
                    move.amount_minor,
                    move.currency,
                ),
            )
        else:
            command(
                "UPDATE_DEAL_STAGE",
                decision_id("deal-stage", contact_id, move.deal_id, move.stage, cause),
                {
                    "deal_id": move.deal_id,
                    "stage": move.stage,
                    "previous_stage": move.previous_stage,
                    "amount_minor": move.amount_minor,
                    "currency": move.currency,
                },
            )
        inputs = {
            "rule": move.rule,
            "deal_id": move.deal_id,
            "stage": move.stage,
            "previous_stage": move.previous_stage or "",
        }
        audit("deal_created" if move.created else "deal_moved", move.reason, inputs)
    for task in outcome.tasks:
        command(
            "CREATE_TASK",
            task.task_id,
            {
                "task_id": task.task_id,
                "title": task.title,
                "due_at": task.due_at,
                "owner_id": task.owner_id,
                "priority": task.priority,
                "notes": task.notes,
            },
        )
        audit(
            "task_created",
            f"{task.rule}: {task.title}",
            {"rule": task.rule, "task_id": task.task_id, "due_at": task.due_at.isoformat()},
        )
    for message in outcome.messages:
        outputs.append(
            notification(
                contact_id,
                message.notification_id,
                message.channel,
                message.recipient,
                message.template,
                message.subject,
                message.context,
                at,
                cause,
            )
        )
        audit(
            "contact_notified",
            f"{message.rule}: {message.template} by {message.channel}",
            {"rule": message.rule, "template": message.template, "channel": message.channel},
        )
    for reason in outcome.skipped:
        audit("notification_skipped", reason, {})
    return outputs


def stage_change_triggers(outcome: PipelineOutcome, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The pipeline's own deal moves as DEAL_STAGE_CHANGED triggers, so the stale-deal
    clock follows them without waiting for the CRM's change feed to echo them."""
    return [
        {
            "event_id": f"{event['event_id']}:{move.rule}:{move.deal_id}",
            "event_type": "DEAL_STAGE_CHANGED",
            "event_time": event["event_time"],
            "payload": {
                "deal_id": move.deal_id,
                "stage": move.stage,
                "previous_stage": move.previous_stage,
            },
        }
        for move in outcome.moves
    ]
