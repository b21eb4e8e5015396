"""The CRM's own change feed: HubSpot webhooks (a JSON array of subscription events),
signed with ``X-HubSpot-Signature-v3`` over method, URL, body and
``X-HubSpot-Request-Timestamp``. Contact creations and property changes become
CONTACT_UPDATED (an ``email`` or ``phone`` change also links that identifier to the CRM
id); a deal's ``dealstage`` change becomes DEAL_STAGE_CHANGED."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from pydantic import BaseModel, RootModel

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Source, WebhookRequest, validated

SYSTEM = "hubspot"


class Subscription(BaseModel):
    eventId: int
    subscriptionType: str
    objectId: int
    occurredAt: int
    portalId: int | None = None
    propertyName: str | None = None
    propertyValue: str | None = None
    changeSource: str | None = None


class Batch(RootModel[list[Subscription]]):
    pass


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.hubspot_v3(
        request.method,
        request.url,
        request.body,
        request.header("X-HubSpot-Request-Timestamp"),
        request.header("X-HubSpot-Signature-v3"),
        secret,
        now,
    )


# HubSpot writes a time zone as "america_slash_new_york"; the profile keeps IANA names.
_IANA_ZONES = {
    zone.lower().replace("/", "_slash_"): zone for zone in zoneinfo.available_timezones()
}

# HubSpot's contact properties under the profile's names.
PROFILE_PROPERTIES = {
    "firstname": "first_name",
    "lastname": "last_name",
    "company": "company",
    "jobtitle": "title",
    "address": "address",
    "city": "city",
    "state": "region",
    "zip": "postcode",
    "country": "country",
    "hs_timezone": "timezone",
}


def _contact(sub: Subscription, received: datetime, index: int) -> Event:
    name, value = sub.propertyName, sub.propertyValue
    properties = {name: value or ""} if name else {}
    field = PROFILE_PROPERTIES.get(name or "")
    if field == "timezone" and value:
        value = _IANA_ZONES.get(value.lower(), value)
    edited = {field: value} if field and value else {}
    return canonical.event(
        system=SYSTEM,
        provider_event_id=str(sub.eventId),
        event_type="CONTACT_UPDATED",
        event_time=canonical.from_unix_ms(sub.occurredAt, field=f"{index}.occurredAt"),
        received=received,
        identity=identity.identity(
            crm_id=str(sub.objectId),
            email_address=value if name == "email" else None,
            phone_number=value if name in ("phone", "mobilephone") else None,
        ),
        payload={"properties": properties, "previous": {}},
        profile=canonical.profile_of("crm", **edited),
    )


def _deal_stage(sub: Subscription, received: datetime, index: int) -> Event:
    return canonical.event(
        system=SYSTEM,
        provider_event_id=str(sub.eventId),
        event_type="DEAL_STAGE_CHANGED",
        event_time=canonical.from_unix_ms(sub.occurredAt, field=f"{index}.occurredAt"),
        received=received,
        # A deal event names no contact; identity resolution links it by association.
        identity=identity.identity(external_ids={"hubspot_deal": str(sub.objectId)}),
        payload={
            "deal_id": str(sub.objectId),
            "stage": sub.propertyValue or "",
            "previous_stage": None,
            "pipeline": None,
            "amount_minor": None,
            "currency": None,
        },
    )


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    events = []
    for index, sub in enumerate(validated(Batch, request.json()).root):
        if sub.subscriptionType in ("contact.creation", "contact.propertyChange"):
            events.append(_contact(sub, received, index))
        elif sub.subscriptionType == "deal.propertyChange" and sub.propertyName == "dealstage":
            events.append(_deal_stage(sub, received, index))
    return events


SOURCE = Source(
    name="hubspot",
    system=SYSTEM,
    description="HubSpot contact/deal change webhooks (v3 signature)",
    verify=verify,
    parse=parse,
    time_field="occurredAt",
)
