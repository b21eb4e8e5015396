"""Calendar: Calendly ``invitee.created`` (MEETING_BOOKED) and ``invitee.canceled``
(MEETING_CANCELLED), signed with ``Calendly-Webhook-Signature`` (timestamped
HMAC-SHA256; Calendly documents a three-minute tolerance)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Source, Time, WebhookRequest, validated

SYSTEM = "calendly"
TOLERANCE_S = 180


class Membership(BaseModel):
    user_email: str | None = None
    user_name: str | None = None


class ScheduledEvent(BaseModel):
    uri: str
    name: str | None = None
    start_time: Time
    end_time: Time | None = None
    location: dict[str, Any] | None = None
    event_memberships: list[Membership] = Field(default_factory=list)


class Cancellation(BaseModel):
    canceled_by: str | None = None
    reason: str | None = None


class Invitee(BaseModel):
    uri: str
    email: str
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    text_reminder_number: str | None = None
    scheduled_event: ScheduledEvent
    cancellation: Cancellation | None = None


class Webhook(BaseModel):
    event: str
    created_at: Time
    payload: Invitee


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.timestamped_hmac(
        request.header("Calendly-Webhook-Signature"), request.body, secret, now, TOLERANCE_S
    )


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    body = request.json()
    if isinstance(body, dict) and body.get("event") not in ("invitee.created", "invitee.canceled"):
        return []
    hook = validated(Webhook, body)
    invitee = hook.payload
    meeting = invitee.scheduled_event
    host = meeting.event_memberships[0].user_email if meeting.event_memberships else None
    common: dict[str, Any] = {
        "system": SYSTEM,
        "provider_event_id": f"{invitee.uri}:{hook.event}",
        "event_time": hook.created_at,
        "received": received,
        "identity": identity.identity(
            email_address=invitee.email,
            phone_number=invitee.text_reminder_number,
            external_ids={SYSTEM: invitee.uri},
        ),
        # The invitee typed these in the booking form.
        "profile": canonical.profile_of(
            "self",
            name=invitee.name,
            first_name=invitee.first_name,
            last_name=invitee.last_name,
            timezone=invitee.timezone,
        ),
    }
    if hook.event == "invitee.created":
        location = (meeting.location or {}).get("location") or (meeting.location or {}).get(
            "join_url"
        )
        return [
            canonical.event(
                **common,
                event_type="MEETING_BOOKED",
                payload={
                    "meeting_id": meeting.uri,
                    "starts_at": meeting.start_time,
                    "ends_at": meeting.end_time,
                    "title": meeting.name,
                    "host": host,
                    "location": location,
                },
            )
        ]
    cancellation = invitee.cancellation or Cancellation()
    return [
        canonical.event(
            **common,
            event_type="MEETING_CANCELLED",
            payload={
                "meeting_id": meeting.uri,
                "cancelled_by": cancellation.canceled_by,
                "reason": cancellation.reason,
            },
        )
    ]


SOURCE = Source(
    name="calendly",
    system=SYSTEM,
    description="Calendly invitee.created / invitee.canceled",
    verify=verify,
    parse=parse,
    time_field="created_at",
)
