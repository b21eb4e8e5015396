"""E-mail engagement: Mailgun event webhooks (delivered, opened, clicked, failed,
unsubscribed, complained) and inbound replies forwarded by a Mailgun route. Both carry
Mailgun's signature (hex HMAC-SHA256 of timestamp + token with the webhook signing
key): in a ``signature`` object for events, as form fields for inbound mail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, FiniteFloat

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import (
    Event,
    Rejected,
    SignatureRejected,
    Source,
    WebhookRequest,
    validated,
)

SYSTEM = "mailgun"


class Signature(BaseModel):
    timestamp: str
    token: str
    signature: str


class Message(BaseModel):
    headers: dict[str, Any] = Field(default_factory=dict)


class EventData(BaseModel):
    id: str
    event: str
    timestamp: FiniteFloat
    recipient: str
    severity: str | None = None
    reason: str | None = None
    url: str | None = None
    message: Message = Field(default_factory=Message)
    client_info: dict[str, Any] = Field(default_factory=dict, alias="client-info")
    delivery_status: dict[str, Any] = Field(default_factory=dict, alias="delivery-status")


class EventWebhook(BaseModel):
    signature: Signature
    event_data: EventData = Field(alias="event-data")


def verify_event(request: WebhookRequest, secret: bytes, now: float) -> None:
    body = request.json(strict=False)  # a bad field is parse's to name, once signed
    sig = body.get("signature") if isinstance(body, dict) else None
    if not isinstance(sig, dict):
        raise SignatureRejected("missing signature object", field="signature")
    signatures.mailgun(
        str(sig.get("timestamp", "")),
        str(sig.get("token", "")),
        str(sig.get("signature", "")),
        secret,
        now,
    )


def event_token(request: WebhookRequest) -> str:
    return str(request.json(strict=False)["signature"].get("token", ""))


def inbound_token(request: WebhookRequest) -> str:
    return request.form_fields(strict=False).get("token", "")


def parse_event(request: WebhookRequest, received: datetime) -> list[Event]:
    data = validated(EventWebhook, request.json()).event_data
    message_id = str(data.message.headers.get("message-id") or data.id)
    table: dict[str, tuple[str, dict[str, Any]]] = {
        "delivered": (
            "EMAIL_SENT",
            {
                "message_id": message_id,
                "subject": data.message.headers.get("subject"),
                "campaign": None,
            },
        ),
        "opened": (
            "EMAIL_OPENED",
            {"message_id": message_id, "user_agent": data.client_info.get("user-agent")},
        ),
        "clicked": ("EMAIL_CLICKED", {"message_id": message_id, "url": data.url or ""}),
        "failed": (
            "EMAIL_BOUNCED",
            {
                "message_id": message_id,
                "bounce_type": "hard" if data.severity == "permanent" else "soft",
                "reason": data.reason
                or data.delivery_status.get("description")
                or data.delivery_status.get("message"),
            },
        ),
        # A spam complaint suppresses like an unsubscribe does.
        "unsubscribed": ("EMAIL_UNSUBSCRIBED", {"message_id": message_id, "list_id": None}),
        "complained": ("EMAIL_UNSUBSCRIBED", {"message_id": message_id, "list_id": "complaint"}),
    }
    mapped = table.get(data.event)
    if mapped is None:
        return []
    if data.event == "clicked" and not data.url:
        raise Rejected("field event-data.url: a click event needs the URL", field="event-data.url")
    event_type, payload = mapped
    return [
        canonical.event(
            system=SYSTEM,
            provider_event_id=data.id,
            event_type=event_type,
            event_time=canonical.from_unix(data.timestamp, field="event-data.timestamp"),
            received=received,
            identity=identity.identity(email_address=data.recipient),
            payload=payload,
        )
    ]


class InboundMail(BaseModel):
    sender: str
    recipient: str
    timestamp: FiniteFloat  # the signature check reads the form's own text
    token: str
    signature: str
    subject: str | None = None
    message_id: str = Field(alias="Message-Id")
    in_reply_to: str | None = Field(None, alias="In-Reply-To")
    stripped_text: str | None = Field(None, alias="stripped-text")


def verify_inbound(request: WebhookRequest, secret: bytes, now: float) -> None:
    form = request.form_fields(strict=False)  # a bad field is parse's to name, once signed
    signatures.mailgun(
        form.get("timestamp", ""), form.get("token", ""), form.get("signature", ""), secret, now
    )


def parse_inbound(request: WebhookRequest, received: datetime) -> list[Event]:
    mail = validated(InboundMail, request.form_fields())
    snippet = (mail.stripped_text or "").strip()[:500] or None
    return [
        canonical.event(
            system=SYSTEM,
            provider_event_id=f"inbound:{mail.message_id}",
            event_type="EMAIL_REPLIED",
            event_time=canonical.from_unix(mail.timestamp, field="timestamp"),
            received=received,
            identity=identity.identity(email_address=mail.sender),
            payload={
                "message_id": mail.message_id,
                "in_reply_to": mail.in_reply_to,
                "subject": mail.subject,
                "snippet": snippet,
            },
        )
    ]


EVENTS = Source(
    name="mailgun",
    system=SYSTEM,
    description="Mailgun delivered/opened/clicked/failed/unsubscribed/complained",
    verify=verify_event,
    parse=parse_event,
    time_field="event-data.timestamp",
    nonce=event_token,
)
INBOUND = Source(
    name="mailgun-inbound",
    system=SYSTEM,
    description="Mailgun route forwarding an inbound reply",
    verify=verify_inbound,
    parse=parse_inbound,
    time_field="timestamp",
    nonce=inbound_token,
)
