"""Which events a rule reacts to: an event type and conditions on its payload. Scoring
rules, SLA policies and pipeline triggers share it, so a condition means the same in
every rule file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from streams.rules import RuleModel

EventType = Literal[
    "FORM_SUBMITTED",
    "PAGE_VIEWED",
    "CALL_COMPLETED",
    "PAYMENT_RECEIVED",
    "INVOICE_PAID",
    "JOB_STATUS_CHANGED",
    "MEETING_BOOKED",
    "MEETING_COMPLETED",
    "MEETING_CANCELLED",
    "EMAIL_SENT",
    "EMAIL_OPENED",
    "EMAIL_CLICKED",
    "EMAIL_REPLIED",
    "EMAIL_BOUNCED",
    "EMAIL_UNSUBSCRIBED",
    "REP_ACTIVITY_LOGGED",
    "DEAL_STAGE_CHANGED",
    "CONTACT_UPDATED",
]

# Not an event from a source: the router assigned the contact an owner. Its payload has
# rep_id and rule.
ASSIGNED = "ASSIGNED"
TriggerType = Literal[EventType, "ASSIGNED"]  # one Literal: one error when it is misspelt


def payload_matches(payload: Mapping[str, Any], when: Mapping[str, str | list[str]]) -> bool:
    """Every condition holds: a field equals the value (or one of a list of values), or,
    for a ``*_contains`` key, contains the text (case-insensitive)."""
    for key, expected in when.items():
        if key.endswith("_contains"):
            text = str(payload.get(key.removesuffix("_contains")) or "").lower()
            if isinstance(expected, list):
                if not any(e.lower() in text for e in expected):
                    return False
            elif expected.lower() not in text:
                return False
        elif isinstance(expected, list):
            if str(payload.get(key)) not in expected:
                return False
        elif str(payload.get(key)) != expected:
            return False
    return True


class EventMatch(RuleModel):
    """An event of type ``event`` whose payload meets every condition in ``when``."""

    event: TriggerType
    when: dict[str, str | list[str]] = Field(default_factory=dict)

    def matches(self, event: dict[str, Any]) -> bool:
        return event["event_type"] == self.event and payload_matches(event["payload"], self.when)
