"""Which events a rule reacts to: an event type and conditions on its payload. Scoring
rules, SLA policies and pipeline triggers share it, so a condition means the same in
every rule file."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
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
    "NOTE_LOGGED",
    "CALLBACK_REQUESTED",
    "DETAILS_CORRECTED",
    "CONTACT_ENRICHED",
]

# Not an event from a source: the router assigned the contact an owner. Its payload has
# rep_id and rule.
ASSIGNED = "ASSIGNED"
# Not from a source either: an SLA clock breached (an escalation step fired). Its payload
# has policy, level (a string: "1" is the breach itself) and deal_id for per-deal clocks.
SLA_BREACHED = "SLA_BREACHED"
TriggerType = Literal[EventType, "ASSIGNED", "SLA_BREACHED"]  # one Literal: one error if misspelt


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


def scalars(payload: Mapping[str, Any]) -> dict[str, str]:
    """A payload's non-null scalar fields as strings (a map has no one string form)."""
    found = {}
    for key, value in payload.items():
        if isinstance(value, datetime):
            found[key] = value.isoformat()
        elif value is not None and not isinstance(value, dict | list):
            found[key] = str(value)
    return found


class EventMatch(RuleModel):
    """An event of type ``event`` whose payload meets every condition in ``when``."""

    event: TriggerType
    when: dict[str, str | list[str]] = Field(default_factory=dict)

    def matches(self, event: dict[str, Any]) -> bool:
        return event["event_type"] == self.event and payload_matches(event["payload"], self.when)
