"""Phone: Twilio voice status callbacks (form-encoded, ``X-Twilio-Signature``). Final
statuses become CALL_COMPLETED; in-progress ones (initiated, ringing, answered) are
acknowledged and ignored. The contact is the caller on inbound calls and the callee on
outbound ones (a rep calling out)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from pydantic import BaseModel

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Source, WebhookRequest, validated

SYSTEM = "twilio"
FINAL_STATUSES = {"completed", "busy", "no-answer", "failed", "canceled"}


class StatusCallback(BaseModel):
    CallSid: str
    AccountSid: str
    From: str
    To: str
    CallStatus: str
    Direction: str
    CallDuration: int = 0
    Timestamp: str | None = None
    RecordingUrl: str | None = None
    Caller: str | None = None
    CallerName: str | None = None  # with Twilio's caller-name lookup enabled


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.twilio(
        # Lenient: a field that is not text cannot match the signature, so it fails here.
        request.url,
        request.form_fields(strict=False),
        request.header("X-Twilio-Signature"),
        secret,
    )


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    call = validated(StatusCallback, request.form_fields())
    if call.CallStatus not in FINAL_STATUSES:
        return []
    inbound = call.Direction == "inbound"
    contact_number = call.From if inbound else call.To
    event_time = received
    if call.Timestamp:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            event_time = parsedate_to_datetime(call.Timestamp)
        if event_time.tzinfo is None:  # "-0000": RFC 5322's UTC with no local zone known
            event_time = event_time.replace(tzinfo=UTC)
    return [
        canonical.event(
            system=SYSTEM,
            provider_event_id=f"{call.CallSid}:{call.CallStatus}",
            event_type="CALL_COMPLETED",
            event_time=event_time,
            received=received,
            identity=identity.identity(phone_number=contact_number),
            payload={
                "call_id": call.CallSid,
                "direction": "INBOUND" if inbound else "OUTBOUND",
                "status": call.CallStatus,
                "duration_seconds": canonical.call_seconds(call.CallDuration),
                "from_number": identity.phone(call.From, field="From"),
                "to_number": identity.phone(call.To, field="To"),
                "handled_by": None,
                "outcome": None,
                "transcript_summary": None,
                "requested_service": None,
                "next_step": None,
                "recording_url": call.RecordingUrl,
            },
            profile=canonical.profile_of("caller_id", name=call.CallerName) if inbound else {},
        )
    ]


SOURCE = Source(
    name="twilio",
    system=SYSTEM,
    description="Twilio Voice status callbacks",
    verify=verify,
    parse=parse,
    time_field="Timestamp",
)
