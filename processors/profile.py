"""Which source's word a contact's profile keeps when sources disagree.

Every profile value carries its origin (schemas/contact_event.avsc ``ProfileValue``): how
the source came to know it. A value replaces the stored one when its origin ranks at
least as high, so a later answer of the same standing wins and a weaker one never
overwrites a stronger one:

- ``self`` and ``crm`` (40): the person's own answer (a form, a booking) and a person's
  edit in a system of record (a rep correcting the CRM) are the best we get;
- ``voice_ai`` (30): what the caller told the assistant, as its analysis transcribed it;
- ``billing`` (20): the payer's details, which may be a partner's or a company card's;
- ``caller_id`` (10): the phone network's name for the number;
- ``enrichment`` (5): what a data provider says of the e-mail and its company's domain,
  the weakest word: it fills blanks and never corrects what a person said.

A value stored before origins were kept ranks 0: anything replaces it."""

from __future__ import annotations

from collections.abc import Mapping

RANKS = {
    "self": 40,
    "crm": 40,
    "voice_ai": 30,
    "billing": 20,
    "caller_id": 10,
    "enrichment": 5,
}

# The profile fields the CRM contact shows besides its name, company and title (in the
# UPSERT_CONTACT command's properties).
CRM_PROPERTIES = (
    "address",
    "city",
    "postcode",
    "region",
    "country",
    "timezone",
    "service",
    "qualification",
    "industry",
    "company_size",
    "annual_revenue",
    "seniority",
)


def rank(origin: str | None) -> int:
    return RANKS.get(origin or "", 0)


def take(
    profile: dict[str, str],
    origins: dict[str, str],
    values: Mapping[str, str],
    origin: str,
) -> None:
    """Puts ``values`` (all of one ``origin``) into ``profile`` in place, field by field,
    where the origin ranks at least as high as the stored value's."""
    for field, value in values.items():
        value = value.strip()
        if value and rank(origin) >= rank(origins.get(field)):
            profile[field] = value
            origins[field] = origin


def merged(
    survivor: tuple[dict[str, str], dict[str, str]],
    retired: tuple[dict[str, str], dict[str, str]],
) -> tuple[dict[str, str], dict[str, str]]:
    """The (profile, origins) of two contacts proved one person: per field the better
    origin, the survivor's on a tie."""
    profile, origins = dict(retired[0]), dict(retired[1])
    for field, value in survivor[0].items():
        origin = survivor[1].get(field, "")
        if rank(origin) >= rank(origins.get(field)):
            profile[field] = value
            origins[field] = origin
    return profile, origins
