"""The identity stage on in-memory tables (no Kafka): an event keyed by an identifier an
earlier event claimed joins the claimant even before the claim is read back (behind a
backlog it waits behind the events), instead of minting a contact for a merge to retire;
the table still wins where it knows the key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from processors.identity import minted_contact_id
from processors.stages.identity import IdentityStage
from streams.clock import ManualClock
from streams.engine import Decoded
from streams.settings import Settings
from streams.tables import Table
from tests.records import contact_event

AT = datetime(2026, 11, 20, 14, 30, 5, 123000, tzinfo=UTC)
EMAIL, PHONE = "ana.silva@example.com", "+351912345678"

# A form from Ana (e-mail and phone; keyed by e-mail), then her call (keyed by phone).
FORM = contact_event(event_id="typeform:resp-1")
CALL = contact_event(
    event_id="vapi:call-1",
    event_type="CALL_COMPLETED",
    source_system="vapi",
    identity={"email": None, "phone": PHONE, "crm_id": None, "external_ids": {"vapi": "call-1"}},
)


def stage() -> IdentityStage:
    identity, claimed = (Table(name, f"{name}-changelog", None) for name in ("identity", "claimed"))
    for table in (identity, claimed):
        table.store(0)
        table.active = {0}
        table.focus(0)
    return IdentityStage(identity, claimed, Settings(store="memory://"), ManualClock(AT))


def applied(stage: IdentityStage, outputs: list[Any]) -> list[Any]:
    for table in (stage.identity, stage.claimed):
        table.keep()
    return outputs


def take(stage: IdentityStage, key: str, event: dict[str, Any]) -> list[Any]:
    item = Decoded(key.encode(), event, "contact-events", 0, 0, 0, b"as it came")
    return applied(stage, stage.on_event(item))


def claim_back(stage: IdentityStage, claim: dict[str, Any]) -> list[Any]:
    item = Decoded(claim["identifier"].encode(), claim, "identity-claims", 0, 0, 0, None)
    return applied(stage, stage.on_claim(item))


def test_a_call_keyed_by_a_phone_the_form_claimed_joins_its_contact_before_the_claim_lands() -> (
    None
):
    resolving = stage()
    ana = minted_contact_id(f"email:{EMAIL}")
    form = take(resolving, f"email:{EMAIL}", FORM)
    [phone_claim] = [r for _, key, r in form if key == f"phone:{PHONE}"]
    assert (phone_claim["identifier"], phone_claim["contact_id"]) == (f"phone:{PHONE}", ana)

    call = take(resolving, f"phone:{PHONE}", CALL)  # the claim is not read back yet
    assert ("by_contact", ana, b"as it came") in call
    assert resolving.identity.get(f"phone:{PHONE}") == ana
    assert claim_back(resolving, phone_claim) == []  # nothing to merge


def test_the_table_wins_over_what_the_worker_claimed_lately() -> None:
    resolving = stage()
    resolving.identity[f"phone:{PHONE}"] = "c-known"  # the phone is someone's already
    applied(resolving, [])
    ana = minted_contact_id(f"email:{EMAIL}")
    form = take(resolving, f"email:{EMAIL}", FORM)
    [phone_claim] = [r for _, key, r in form if key == f"phone:{PHONE}"]

    call = take(resolving, f"phone:{PHONE}", CALL)
    assert ("by_contact", "c-known", b"as it came") in call
    # The form's claim then finds the phone taken: the two contacts merge, as before.
    survivor, loser = sorted((ana, "c-known"))
    [(topic, key, merge)] = claim_back(resolving, phone_claim)
    assert (topic, key, merge["step"], merge["other"]) == ("merges", loser, "REQUEST", survivor)
