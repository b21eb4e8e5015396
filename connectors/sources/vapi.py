"""Voice AI: Vapi's ``end-of-call-report`` server message (caller, transcript summary,
structured outcome from the assistant's analysis plan, requested service, next step),
and its ``tool-calls`` during the call (connectors.sources.vapi_tools). Vapi
authenticates with the secret itself in ``X-Vapi-Secret``; other message types (status
updates, transcripts) are acknowledged and ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, FiniteFloat

from connectors.sources import canonical, identity, signatures, vapi_tools
from connectors.sources.base import Event, Source, Time, WebhookRequest, validated

SYSTEM = "vapi"
# Vapi's endedReason values that mean nobody talked to the assistant.
ENDED_STATUS = {"customer-did-not-answer": "no-answer", "voicemail": "voicemail"}


class Customer(BaseModel):
    number: str | None = None
    name: str | None = None


class Call(BaseModel):
    id: str
    type: str = "inboundPhoneCall"
    customer: Customer = Field(default_factory=Customer)


class Analysis(BaseModel):
    summary: str | None = None
    structuredData: dict[str, Any] = Field(default_factory=dict)
    successEvaluation: Any = None


class Assistant(BaseModel):
    name: str | None = None


class Artifact(BaseModel):
    recordingUrl: str | None = None


class EndOfCallReport(BaseModel):
    type: str
    call: Call
    endedReason: str | None = None
    startedAt: Time | None = None
    endedAt: Time | None = None
    durationSeconds: FiniteFloat | None = None
    recordingUrl: str | None = None  # older reports; newer ones carry artifact.recordingUrl
    artifact: Artifact = Field(default_factory=Artifact)
    customer: Customer | None = None  # the report's copy of call.customer
    analysis: Analysis = Field(default_factory=Analysis)
    assistant: Assistant = Field(default_factory=Assistant)


class ServerMessage(BaseModel):
    message: dict[str, Any]


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.shared_secret(request.header("X-Vapi-Secret"), secret)


def _text(data: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = data.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    envelope = validated(ServerMessage, request.json())
    if envelope.message.get("type") == "tool-calls":
        return vapi_tools.parse(request, received)
    if envelope.message.get("type") != "end-of-call-report":
        return []
    report = validated(_Report, {"message": envelope.message}).message
    data = report.analysis.structuredData
    status = ENDED_STATUS.get(report.endedReason or "", "completed")
    duration = report.durationSeconds
    if duration is None and report.startedAt and report.endedAt:
        duration = (report.endedAt - report.startedAt).total_seconds()
    inbound = report.call.type != "outboundPhoneCall"
    outcome = _text(data, "outcome", "qualification") or report.endedReason
    service = _text(data, "requested_service", "service")
    # What the caller told the assistant, as its analysis plan extracted it; the customer
    # record's name is only what the number is known by.
    said = canonical.profile_of(
        "voice_ai",
        name=_text(data, "name", "customer_name", "caller_name", "full_name"),
        first_name=_text(data, "first_name", "firstName"),
        last_name=_text(data, "last_name", "lastName"),
        company=_text(data, "company", "company_name"),
        address=_text(data, "address", "street_address"),
        city=_text(data, "city"),
        postcode=_text(data, "postcode", "zip", "postal_code", "zip_code"),
        service=service,
        qualification=_text(data, "outcome", "qualification"),
    )
    customer = report.customer or report.call.customer
    known = canonical.profile_of("caller_id", name=customer.name or report.call.customer.name)
    return [
        canonical.event(
            system=SYSTEM,
            provider_event_id=f"{report.call.id}:end-of-call-report",
            event_type="CALL_COMPLETED",
            event_time=report.endedAt or received,
            received=received,
            identity=identity.identity(
                phone_number=report.call.customer.number,
                email_address=_text(data, "email", "customer_email"),
                external_ids={SYSTEM: report.call.id},
            ),
            payload={
                "call_id": report.call.id,
                "direction": "INBOUND" if inbound else "OUTBOUND",
                "status": status,
                "duration_seconds": canonical.call_seconds(duration),
                "from_number": identity.phone(
                    report.call.customer.number, field="call.customer.number"
                )
                if inbound
                else None,
                "to_number": None if inbound else identity.phone(report.call.customer.number),
                "handled_by": report.assistant.name or "vapi-assistant",
                "outcome": outcome,
                "transcript_summary": report.analysis.summary,
                "requested_service": service,
                "next_step": _text(data, "next_step", "nextStep"),
                "recording_url": report.artifact.recordingUrl or report.recordingUrl,
            },
            profile=known | said,
        )
    ]


class _Report(BaseModel):
    """Validating through this names fields by their path under ``message``."""

    message: EndOfCallReport


async def answer(request: WebhookRequest, lookup: vapi_tools.Lookup) -> dict[str, Any] | None:
    """The tool calls' results; None (the gateway's usual answer) for other messages."""
    if not vapi_tools.is_tool_calls(request):
        return None
    return await vapi_tools.answer(request, lookup)


SOURCE = Source(
    name="vapi",
    system=SYSTEM,
    description="Vapi end-of-call-report and tool-calls",
    verify=verify,
    parse=parse,
    time_field="message.endedAt (tool calls: message.timestamp)",
    answer=answer,
)
