"""Billing: Stripe events (``invoice.paid``, ``payment_intent.succeeded``,
``checkout.session.completed``), signed with ``Stripe-Signature`` (timestamped
HMAC-SHA256, five minutes' tolerance). Other event types are acknowledged and ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Source, WebhookRequest, validated

SYSTEM = "stripe"


class _Data(BaseModel):
    object: dict[str, Any]


class StripeEvent(BaseModel):
    id: str
    type: str
    created: int
    data: _Data


class Address(BaseModel):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class Invoice(BaseModel):
    id: str
    amount_paid: int
    currency: str
    customer: str | None = None
    customer_email: str | None = None
    customer_phone: str | None = None
    customer_name: str | None = None
    customer_address: Address | None = None


class PaymentIntent(BaseModel):
    id: str
    amount_received: int
    currency: str
    customer: str | None = None
    receipt_email: str | None = None
    invoice: str | None = None
    payment_method_types: list[str] = []


class CustomerDetails(BaseModel):
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    address: Address | None = None


class CheckoutSession(BaseModel):
    id: str
    currency: str | None = None
    amount_total: int | None = None
    customer: str | None = None
    customer_details: CustomerDetails | None = None
    payment_intent: str | None = None
    invoice: str | None = None


T = TypeVar("T", bound=BaseModel)


class _Object(BaseModel, Generic[T]):
    object: T


class _Wrapped(BaseModel, Generic[T]):
    """Validating ``data.object`` through this names fields by their path in the event."""

    data: _Object[T]


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.timestamped_hmac(
        request.header("Stripe-Signature"),
        request.body,
        secret,
        now,
        signatures.DEFAULT_TOLERANCE_S,
    )


def _payer(name: str | None, address: Address | None) -> dict[str, Any]:
    """What the payer entered at checkout or the invoice's customer record holds."""
    address = address or Address()
    street = ", ".join(filter(None, (address.line1, address.line2)))
    return canonical.profile_of(
        "billing",
        name=name,
        address=street or None,
        city=address.city,
        region=address.state,
        postcode=address.postal_code,
        country=address.country,
    )


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    event = validated(StripeEvent, request.json())
    obj = {"data": {"object": event.data.object}}
    common: dict[str, Any] = {
        "system": SYSTEM,
        "provider_event_id": event.id,
        "event_time": canonical.from_unix(event.created, field="created"),
        "received": received,
    }
    if event.type == "invoice.paid":
        invoice = validated(_Wrapped[Invoice], obj).data.object
        return [
            canonical.event(
                **common,
                event_type="INVOICE_PAID",
                identity=identity.identity(
                    email_address=invoice.customer_email,
                    phone_number=invoice.customer_phone,
                    external_ids={SYSTEM: invoice.customer or ""},
                ),
                payload={
                    "invoice_id": invoice.id,
                    "amount_minor": invoice.amount_paid,
                    "currency": invoice.currency.lower(),
                    "customer_id": invoice.customer,
                },
                profile=_payer(invoice.customer_name, invoice.customer_address),
            )
        ]
    if event.type == "payment_intent.succeeded":
        intent = validated(_Wrapped[PaymentIntent], obj).data.object
        return [
            canonical.event(
                **common,
                event_type="PAYMENT_RECEIVED",
                identity=identity.identity(
                    email_address=intent.receipt_email, external_ids={SYSTEM: intent.customer or ""}
                ),
                payload={
                    "payment_id": intent.id,
                    "amount_minor": intent.amount_received,
                    "currency": intent.currency.lower(),
                    "method": ",".join(intent.payment_method_types) or None,
                    "invoice_id": intent.invoice,
                },
            )
        ]
    if event.type == "checkout.session.completed":
        session = validated(_Wrapped[CheckoutSession], obj).data.object
        details = session.customer_details or CustomerDetails()
        return [
            canonical.event(
                **common,
                event_type="PAYMENT_RECEIVED",
                identity=identity.identity(
                    email_address=details.email,
                    phone_number=details.phone,
                    external_ids={SYSTEM: session.customer or ""},
                ),
                payload={
                    "payment_id": session.payment_intent or session.id,
                    "amount_minor": session.amount_total or 0,
                    "currency": (session.currency or "usd").lower(),
                    "method": "checkout",
                    "invoice_id": session.invoice,
                },
                profile=_payer(details.name, details.address),
            )
        ]
    return []


SOURCE = Source(
    name="stripe",
    system=SYSTEM,
    description="Stripe invoice.paid, payment_intent.succeeded, checkout.session.completed",
    verify=verify,
    parse=parse,
    time_field="created",
)
