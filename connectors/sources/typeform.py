"""Web forms: Typeform ``form_response`` webhooks, signed with ``Typeform-Signature``
(``sha256=`` + base64 HMAC-SHA256 of the body). Answers become the form's fields, keyed
by each field's ``ref``; the e-mail and phone answers identify the person."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, FiniteFloat

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Source, Time, WebhookRequest, validated

SYSTEM = "typeform"


class FieldRef(BaseModel):
    id: str
    ref: str | None = None
    type: str | None = None


class Answer(BaseModel):
    type: str
    field: FieldRef
    text: str | None = None
    email: str | None = None
    phone_number: str | None = None
    url: str | None = None
    number: FiniteFloat | None = None
    boolean: bool | None = None
    date: str | None = None
    choice: dict[str, Any] | None = None
    choices: dict[str, Any] | None = None

    def value(self) -> str:
        if self.choice is not None:
            return str(self.choice.get("label") or self.choice.get("other") or "")
        if self.choices is not None:
            return ", ".join(str(label) for label in self.choices.get("labels", []))
        for candidate in (self.text, self.email, self.phone_number, self.url, self.date):
            if candidate is not None:
                return candidate
        if self.number is not None:
            return f"{self.number:g}"
        if self.boolean is not None:
            return "true" if self.boolean else "false"
        return ""


class Definition(BaseModel):
    id: str | None = None
    title: str | None = None


class FormResponse(BaseModel):
    form_id: str
    token: str
    submitted_at: Time
    definition: Definition = Field(default_factory=Definition)
    answers: list[Answer] = Field(default_factory=list)
    hidden: dict[str, str] = Field(default_factory=dict)


class Webhook(BaseModel):
    event_id: str
    event_type: str
    form_response: FormResponse


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.typeform(request.header("Typeform-Signature"), request.body, secret)


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    hook = validated(Webhook, request.json())
    if hook.event_type != "form_response":
        return []
    response = hook.form_response
    email = next((a.email for a in response.answers if a.email), None)
    phone = next((a.phone_number for a in response.answers if a.phone_number), None)
    fields = {(a.field.ref or a.field.id): a.value() for a in response.answers}
    utm = {k: v for k, v in response.hidden.items() if k.startswith("utm_")}
    return [
        canonical.event(
            system=SYSTEM,
            provider_event_id=hook.event_id,
            event_type="FORM_SUBMITTED",
            event_time=response.submitted_at,
            received=received,
            identity=identity.identity(
                email_address=email, phone_number=phone, external_ids={SYSTEM: response.token}
            ),
            payload={
                "form_id": response.form_id,
                "form_name": response.definition.title,
                "page_url": response.hidden.get("page_url"),
                "fields": fields,
                "utm": utm,
            },
            profile=canonical.profile_of("self", name=fields.get("name")),
        )
    ]


SOURCE = Source(
    name="typeform",
    system=SYSTEM,
    description="Typeform form_response",
    verify=verify,
    parse=parse,
    time_field="form_response.submitted_at",
)
