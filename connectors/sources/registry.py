"""Every source connector the gateway serves, by route name (POST /webhooks/<name>)."""

from __future__ import annotations

from connectors.sources import calendly, generic, hubspot, mailgun, stripe, twilio, typeform, vapi
from connectors.sources.base import Source
from streams.settings import Settings

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

# Names a job system may not take: every other source's name and system, and the
# external-id namespace of HubSpot deals.
RESERVED_SYSTEMS = (
    {source.name for source in SOURCES.values()}
    | {source.system for source in SOURCES.values()}
    | {"hubspot_deal"}
) - {generic.JOBS.name, generic.JOBS.system}


def configured(settings: Settings) -> dict[str, Source]:
    """SOURCES as ``settings`` configure them (the job systems a jobs payload may name);
    ValueError when the settings are unusable."""
    jobs = generic.jobs_source(settings.job_systems, RESERVED_SYSTEMS)
    return SOURCES | {jobs.name: jobs}
