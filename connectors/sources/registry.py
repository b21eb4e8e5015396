"""Every source connector the gateway serves, by route name (POST /webhooks/<name>)."""

from __future__ import annotations

from connectors.sources import calendly, generic, hubspot, mailgun, stripe, twilio, typeform, vapi
from connectors.sources.base import Source

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        stripe.SOURCE,
        twilio.SOURCE,
        vapi.SOURCE,
        calendly.SOURCE,
        typeform.SOURCE,
        generic.FORMS,
        generic.JOBS,
        mailgun.EVENTS,
        mailgun.INBOUND,
        hubspot.SOURCE,
    )
}
