"""What a workflow's effects become: notifications, CRM commands and audit entries."""

from __future__ import annotations

from datetime import datetime

from processors.records.base import audit_entry, crm_command, notification
from processors.records.contact import upsert_contact
from processors.records.jobs import scheduled_job_outputs
from processors.state import ContactState
from processors.workflows.effects import Audit, Effect, Message, Task, Upsert
from streams.engine import Output


def workflow_outputs(state: ContactState, effects: list[Effect], now: datetime) -> list[Output]:
    """What the workflow engine decided, as records, in the order it decided them."""
    contact_id = state.contact_id
    outputs: list[Output] = []

    for effect in effects:
        if isinstance(effect, Audit):
            entry = audit_entry(
                contact_id,
                "workflow",
                effect.decision,
                effect.reason,
                effect.inputs,
                [effect.cause],
                now,
                effect.audit_id,  # the engine's: hashing another one here was wasted
            )
            outputs.append(("audit", contact_id, entry))
        elif isinstance(effect, Message):
            outputs.append(
                notification(
                    contact_id,
                    effect.notification_id,
                    effect.channel,
                    effect.recipient,
                    effect.template,
                    effect.subject,
                    effect.context,
                    now,
                    effect.cause,
                )
            )
        elif isinstance(effect, Upsert):
            record = upsert_contact(
                state, effect.command_id, effect.cause, now, **effect.properties
            )
            outputs.append(("commands", contact_id, record))
        elif isinstance(effect, Task):
            payload = {
                "task_id": effect.task_id,
                "title": effect.title,
                "due_at": effect.due_at,
                "owner_id": state.owner_id,
                "priority": effect.priority,
                "notes": effect.notes,
            }
            outputs.append(
                crm_command(contact_id, "CREATE_TASK", effect.task_id, payload, now, effect.cause)
            )
            if effect.job_type is not None:
                outputs += scheduled_job_outputs(state, effect, now)
        else:
            payload = {
                "deal_id": effect.deal_id,
                "stage": effect.stage,
                "previous_stage": effect.previous_stage,
            }
            outputs.append(
                crm_command(
                    contact_id, "UPDATE_DEAL_STAGE", effect.command_id, payload, now, effect.cause
                )
            )
    return outputs
