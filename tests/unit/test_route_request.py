"""A routing request carries only what routing reads of the contact (ROUTED_FIELDS): the
router decides, notifies and audits exactly as it would on the contact's whole state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.area import AreaCheck
from processors.records.timeline import route_request
from processors.router import RouterState, handle
from processors.routing import Rep, load_rules
from processors.state import Award, ContactState, Deal, OwnerTask, ScoringState

RULES = load_rules()
AT = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
REPS: list[dict[str, Any]] = [
    {"rep_id": "ana", "teams": ["emea", "inbound"], "timezone": "Europe/Lisbon"},
    {"rep_id": "bob", "teams": ["inbound", "enterprise"], "named_accounts": ["acme.example"]},
    {"rep_id": "hana", "teams": ["healthcare"], "timezone": "America/Los_Angeles"},
]
ROSTER = {
    r["rep_id"]: Rep.model_validate({"name": r["rep_id"].title(), "email": "x@example.com", **r})
    for r in REPS
}

profiles = st.fixed_dictionaries(
    {},
    optional={
        "country": st.sampled_from(["PT", "US", "DE", "GB"]),
        "region": st.sampled_from(["emea", "na"]),
        "industry": st.sampled_from(["healthcare", "retail", "software"]),
        "postcode": st.sampled_from(["94103", "10001", "1000-001"]),
        "email_domain": st.sampled_from(["acme.example", "example.com"]),
        "company": st.sampled_from(["Acme", "Globex"]),
        "first_name": st.sampled_from(["Ana", "Dev"]),
        "last_name": st.sampled_from(["Silva", "Schmidt"]),
        "deal_size": st.sampled_from(["5000", "120000"]),
        "company_size": st.sampled_from(["10", "5000"]),
    },
)
areas = st.none() | st.builds(
    AreaCheck,
    postcode=st.just("94103"),
    in_area=st.none() | st.booleans(),
    branch=st.sampled_from([None, "sf"]),
    team=st.sampled_from([None, "inbound", "emea"]),
    distance_km=st.none() | st.floats(0, 300),
    reason=st.just("placed"),
)


@st.composite
def contacts(draw: st.DrawFn) -> ContactState:
    """A contact with what routing reads, and with much it does not (scoring history,
    tasks, event ids, workflows)."""
    inbound = draw(st.lists(st.sampled_from(["web", "phone", "email", "meeting"]), unique=True))
    return ContactState(
        contact_id="c-1",
        identifiers=draw(
            st.lists(st.sampled_from(["email:ana@acme.example", "phone:+14155550100"]), unique=True)
        ),
        profile=draw(profiles),
        score=draw(st.floats(0, 100)),
        band=draw(st.sampled_from([None, "warm", "hot"])),
        area=draw(areas),
        owner_id=draw(st.sampled_from([None, "ana"])),
        open_deals={
            "d-1": Deal(
                deal_id="d-1",
                stage="qualified",
                amount_minor=draw(st.integers(0, 10**8)),
                updated_at=AT,
            )
        },
        last_inbound={c: AT - timedelta(minutes=n) for n, c in enumerate(inbound)},
        scoring=ScoringState(
            awards=[Award(rule="form-submitted", points=15.0, at=AT, decays=True)]
        ),
        tasks=[OwnerTask(task_id="t-1", title="Call back", due_at=AT, at=AT)],
        recent_event_ids=[f"e-{n}" for n in range(50)],
        workflows={"new-web-lead": "v1 wait-for-reply"},
    )


def decided(message: dict[str, Any]) -> tuple[RouterState, list[Any]]:
    return handle(message, RouterState(roster=ROSTER), RULES)


@given(contacts())
@settings(max_examples=200, deadline=None)
def test_the_router_decides_the_same_on_the_request_as_on_the_whole_state(
    contact: ContactState,
) -> None:
    _, _, request = route_request(contact, "e-1", AT)
    whole = {**request, "contact": contact.model_dump_json()}
    assert len(request["contact"]) < len(whole["contact"])
    assert decided(request) == decided(whole)
