"""Lead routing: pure functions of (contact, roster, rotation, rules, time)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.routing import (
    EXAMPLE_ROSTER,
    Rep,
    RoutingRules,
    WorkingHours,
    load_roster,
    load_rules,
    rep_from_record,
    rep_record,
    route,
)
from processors.state import ContactState, Deal

RULES = load_rules()
# Monday 2026-11-23, 15:00 UTC: 10:00 in New York, 15:00 in Lisbon, 00:00 in Tokyo.
MONDAY_1500Z = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def rep(rep_id: str, **fields: object) -> Rep:
    base: dict[str, object] = {
        "rep_id": rep_id,
        "name": rep_id.title(),
        "email": f"{rep_id}@northside.example",
        "teams": ["inbound"],
    }
    return Rep.model_validate(base | fields)


def contact(**profile: str) -> ContactState:
    return ContactState(contact_id="c-1", profile=profile)


def roster(*reps: Rep) -> dict[str, Rep]:
    return {r.rep_id: r for r in reps}


def test_territory_picks_the_emea_team() -> None:
    team = roster(rep("ana", teams=["emea"], timezone="Europe/Lisbon"), rep("bob"))
    _, decision = route(contact(country="PT"), team, {}, RULES, MONDAY_1500Z)
    assert (decision.rep_id, decision.rule) == ("ana", "emea")
    assert "working now" in decision.reason


def test_industry_and_region_rules_combine() -> None:
    team = roster(
        rep(
            "hana",
            teams=["healthcare"],
            timezone="America/Los_Angeles",
            working_hours=WorkingHours(start="06:00", end="18:00"),
        ),
        rep("bob"),
    )
    _, decision = route(
        contact(country="US", region="CA", industry="Healthcare"), team, {}, RULES, MONDAY_1500Z
    )
    assert (decision.rep_id, decision.rule) == ("hana", "west-coast-healthcare")


def test_a_named_account_goes_to_its_owner() -> None:
    team = roster(rep("kai", named_accounts=["bigco.example"]), rep("bob"))
    _, decision = route(contact(email_domain="bigco.example"), team, {}, RULES, MONDAY_1500Z)
    assert (decision.rep_id, decision.rule) == ("kai", "named-accounts")


def test_deal_size_bands_route_to_enterprise() -> None:
    big = ContactState(
        contact_id="c-1",
        open_deals={
            "d": Deal(
                deal_id="d", stage="qualifiedtobuy", updated_at=MONDAY_1500Z, amount_minor=9_000_000
            )
        },
    )
    team = roster(rep("eve", teams=["enterprise"], timezone="America/New_York"), rep("bob"))
    _, decision = route(big, team, {}, RULES, MONDAY_1500Z)
    assert (decision.rep_id, decision.rule) == ("eve", "enterprise")


def test_out_of_office_and_full_reps_are_skipped() -> None:
    team = roster(
        rep("ooo", out_of_office=True),
        rep("full", capacity=3, open_leads=3),
        rep("free", timezone="Europe/Lisbon"),
    )
    _, decision = route(contact(), team, {}, RULES, MONDAY_1500Z)
    assert decision.rep_id == "free"
    assert decision.considered == ["free"]


def test_working_hours_are_read_in_each_reps_time_zone() -> None:
    tokyo = rep("yuki", timezone="Asia/Tokyo")  # midnight there
    lisbon = rep("rui", timezone="Europe/Lisbon")  # 15:00 there
    _, decision = route(contact(), roster(tokyo, lisbon), {}, RULES, MONDAY_1500Z)
    assert decision.rep_id == "rui"


def test_working_hours_follow_daylight_saving_time() -> None:
    new_york = rep("nia", timezone="America/New_York")
    # 13:30 UTC is 08:30 EST on Friday 6 March 2026 and 09:30 EDT on Monday 9 March.
    assert not new_york.working_at(datetime(2026, 3, 6, 13, 30, tzinfo=UTC))
    assert new_york.working_at(datetime(2026, 3, 9, 13, 30, tzinfo=UTC))


def test_after_hours_assigns_anyway_or_holds_as_declared() -> None:
    tokyo = roster(rep("yuki", timezone="Asia/Tokyo"))
    _, anyway = route(contact(), tokyo, {}, RULES, MONDAY_1500Z)
    assert anyway.rep_id == "yuki" and "nobody working now" in anyway.reason
    holding = RoutingRules.model_validate(RULES.model_dump() | {"after_hours": "hold"})
    _, held = route(contact(), tokyo, {}, holding, MONDAY_1500Z)
    assert (held.rep_id, held.held) == (None, True)


def test_nobody_available_is_a_decision_too() -> None:
    _, decision = route(contact(), roster(rep("ooo", out_of_office=True)), {}, RULES, MONDAY_1500Z)
    assert decision.rep_id is None
    assert decision.reason == "no rule matched with an available rep"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.integers(1, 4))
def test_weighted_round_robin_is_exactly_proportional(weights: list[int], rounds: int) -> None:
    team = roster(
        *(
            rep(f"r{i}", weight=w, timezone="Europe/Lisbon", capacity=10_000)
            for i, w in enumerate(weights)
        )
    )
    rotation: dict[str, int] = {}
    picks: Counter[str] = Counter()
    for _ in range(sum(weights) * rounds):
        rotation, decision = route(contact(), team, rotation, RULES, MONDAY_1500Z)
        assert decision.rep_id is not None
        picks[decision.rep_id] += 1
    assert picks == Counter({f"r{i}": w * rounds for i, w in enumerate(weights)})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4)), min_size=1, max_size=5),
    st.integers(1, 40),
)
def test_capacity_is_never_exceeded(reps: list[tuple[int, int]], leads: int) -> None:
    team = roster(
        *(
            rep(f"r{i}", weight=w, capacity=c, timezone="Europe/Lisbon")
            for i, (w, c) in enumerate(reps)
        )
    )
    rotation: dict[str, int] = {}
    for _ in range(leads):
        rotation, decision = route(contact(), team, rotation, RULES, MONDAY_1500Z)
        if decision.rep_id is None:
            assert all(r.open_leads >= r.capacity for r in team.values())
            continue
        chosen = team[decision.rep_id]
        team[chosen.rep_id] = chosen.model_copy(update={"open_leads": chosen.open_leads + 1})
    assert all(r.open_leads <= r.capacity for r in team.values())


def test_the_example_roster_loads_and_round_trips_through_its_record_form() -> None:
    reps = load_roster(EXAMPLE_ROSTER).reps
    assert [r.rep_id for r in reps] == ["rep-jordan", "rep-priya", "rep-sam", "rep-kai"]
    assert all(rep_from_record(rep_record(r)) == r for r in reps)
