"""Identity resolution's pure rules, and a multi-source story played through them the
way the identity stage does (one table from identifier to contact id)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processors.identity import claim, merge_states, minted_contact_id, resolve
from processors.state import Award, Consent, ContactState, ScoringState, identifiers_of

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_an_unknown_key_mints_a_stable_id_and_claims_the_rest() -> None:
    found = resolve(
        "email:ana@example.com", None, ["crm:42", "email:ana@example.com", "phone:+14155550132"]
    )
    assert found.contact_id == minted_contact_id("email:ana@example.com")
    assert found.minted
    assert found.claims == ("crm:42", "phone:+14155550132")
    # A replay mints the same id.
    assert resolve("email:ana@example.com", None, []).contact_id == found.contact_id


def test_a_known_key_resolves_to_its_contact() -> None:
    found = resolve("phone:+1", "c-1", ["phone:+1"])
    assert (found.contact_id, found.minted, found.claims) == ("c-1", False, ())


def test_claims_link_new_identifiers_and_merge_on_conflict() -> None:
    assert claim("phone:+1", None, "c-b").linked
    assert claim("phone:+1", "c-b", "c-b").merge is None
    outcome = claim("phone:+1", "c-b", "c-a")
    assert outcome.owner == "c-a"
    assert outcome.merge is not None
    assert (outcome.merge.survivor, outcome.merge.loser) == ("c-a", "c-b")
    # Both sides of a conflict reach the same survivor.
    assert claim("phone:+1", "c-a", "c-b").owner == "c-a"


def play(story: list[dict[str, str | None]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The identity stage over a story of identity blocks; returns the identifier table
    and the merges (loser, survivor) it recorded."""
    table: dict[str, str] = {}
    aliases: dict[str, str] = {}
    merges = []

    def alive(contact: str) -> str:
        while contact in aliases:
            contact = aliases[contact]
        return contact

    for identity in story:
        ids = identifiers_of({**identity, "external_ids": {}})
        found = resolve(ids[0], table.get(ids[0]), ids)
        table.setdefault(ids[0], found.contact_id)
        for identifier in found.claims:
            outcome = claim(identifier, table.get(identifier), found.contact_id)
            table[identifier] = outcome.owner
            if outcome.merge:
                # A merge joins the contacts the two ids have become (earlier merges may
                # already have retired either), as the contact stage does by following
                # its aliases.
                survivor, loser = sorted(
                    {alive(outcome.merge.loser), alive(outcome.merge.survivor)}
                )
                if survivor != loser:
                    merges.append((loser, survivor))
                    aliases[loser] = survivor
    return {k: alive(v) for k, v in table.items()}, merges


def test_phone_then_form_then_crm_is_one_contact() -> None:
    table, merges = play(
        [
            {"phone": "+14155550132"},  # voice AI call
            {"email": "ana@example.com", "phone": "+14155550132"},  # web form
            {"crm_id": "4501", "email": "ana@example.com"},  # CRM change feed
            {"email": "ana@example.com"},  # e-mail click
        ]
    )
    assert len(set(table.values())) == 1
    assert set(table) == {"phone:+14155550132", "email:ana@example.com", "crm:4501"}
    assert len(merges) == 2  # the form joined phone and e-mail, the CRM feed joined crm


def test_two_people_stay_two() -> None:
    table, merges = play([{"email": "ana@example.com"}, {"email": "bruno@example.com"}])
    assert len(set(table.values())) == 2
    assert merges == []


def test_merged_state_keeps_both_histories_and_either_opt_out() -> None:
    survivor = ContactState(
        contact_id="c-a",
        identifiers=["phone:+1"],
        profile={"company": "Silva Bakery"},
        recent_event_ids=["e1"],
        first_seen=T0,
        last_event_time=T0,
        scoring=ScoringState(awards=[Award(rule="inbound-call", points=20, at=T0, decays=True)]),
    )
    loser = ContactState(
        contact_id="c-b",
        identifiers=["email:ana@example.com"],
        profile={"company": "Old name", "title": "Owner"},
        owner_id="rep-1",
        routing="assigned",
        recent_event_ids=["e2", "e1"],
        consent=Consent(email_opt_out=True),
        first_seen=T0 - timedelta(days=3),
        last_event_time=T0 + timedelta(hours=1),
        scoring=ScoringState(
            awards=[Award(rule="form-submitted", points=15, at=T0 - timedelta(days=3), decays=True)]
        ),
    )
    merged = merge_states(survivor, loser)
    assert merged.contact_id == "c-a"
    assert merged.identifiers == ["phone:+1", "email:ana@example.com"]
    assert merged.profile == {"company": "Silva Bakery", "title": "Owner"}
    assert (merged.owner_id, merged.routing) == ("rep-1", "assigned")
    assert merged.consent.email_opt_out
    assert merged.recent_event_ids == ["e1", "e2"]
    assert [a.rule for a in merged.scoring.awards] == ["form-submitted", "inbound-call"]
    assert (merged.first_seen, merged.last_event_time) == (
        T0 - timedelta(days=3),
        T0 + timedelta(hours=1),
    )
