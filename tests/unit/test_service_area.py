"""Service areas: the rules file, offline geocoding, the contact's area check, and how
scoring, routing, workflow filters, audit and explain use it. Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from processors.area import ServiceAreas, check, geocode, haversine_km, load_areas
from processors.commands.explain import render
from processors.contact import advance
from processors.records.contact import contact_fields, qualification_audit
from processors.routing import Rep, load_rules, route
from processors.scoring import load_model
from processors.state import ContactState
from processors.workflows.conditions import Condition
from processors.workflows.library import load_library
from streams.rules import RuleFileError

AREAS = load_areas()
MODEL = load_model()
RULES = load_rules()
MONDAY_1500Z = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def form(postcode: str, event_id: str = "typeform:1", **fields: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "FORM_SUBMITTED",
        "source_system": "typeform",
        "event_time": MONDAY_1500Z,
        "received_time": MONDAY_1500Z,
        "identity": {"email": "ana@acme.example", "external_ids": {}},
        "profile": {},
        "payload": {"form_id": "f", "fields": {"postcode": postcode, **fields}, "utm": {}},
    }


def placed(postcode: str, **fields: str) -> ContactState:
    return advance(ContactState(contact_id="c-1"), form(postcode, **fields), MODEL, AREAS).state


def test_haversine_and_the_bundled_centroids() -> None:
    san_francisco, los_angeles = geocode("94103", "US"), geocode("90012", "US")
    assert san_francisco is not None and los_angeles is not None
    assert 540 < haversine_km(san_francisco, los_angeles) < 570  # ~559 km as the crow flies
    assert geocode("94103-1234", "US") == san_francisco  # ZIP+4 is the ZIP's place
    assert geocode("1000-001", "PT") is None  # the bundled data is US-only


def test_inside_a_circle_on_a_list_outside_and_unknown() -> None:
    inside = check({"postcode": "94110"}, AREAS)
    assert inside is not None and inside.in_area is True
    assert (inside.branch, inside.team) == ("San Francisco", "sf-metro")
    assert inside.distance_km is not None and inside.distance_km < 5
    listed = check({"postcode": "95112"}, AREAS)
    assert listed is not None and (listed.in_area, listed.branch) == (True, "South Bay")
    outside = check({"postcode": "10001"}, AREAS)
    assert outside is not None and outside.in_area is False
    assert outside.distance_km is not None and outside.distance_km > 4000
    assert "outside its 30 km" in outside.reason
    unknown = check({"postcode": "1000-001", "country": "PT"}, AREAS)
    assert unknown is not None and unknown.in_area is None  # never "out" for lack of data
    assert check({"city": "Oakland"}, AREAS) is None


def test_an_invalid_areas_file_names_the_line_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "areas.yaml"
    path.write_text(
        "version: 1\n"
        "branches:\n"
        "  - {name: A, team: a, centre: {lat: 37.7, lon: -122.4}, radius_km: 20}\n"
        "  - {name: B, team: b, centre: {lat: 37.7, lon: -122.4}}\n"
        "  - {name: C, team: c, centre: {lat: 97, lon: 0}, radius_km: 5}\n"
    )
    with pytest.raises(RuleFileError) as caught:
        load_areas(path)
    message = str(caught.value)
    assert "a circle needs both centre and radius_km" in message
    assert "lat" in message and "less than or equal to 90" in message
    assert f"{path}:4" in message


def test_a_branch_is_a_circle_or_a_list_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ServiceAreas.model_validate(
            {
                "branches": [
                    {
                        "name": "A",
                        "team": "a",
                        "centre": {"lat": 1, "lon": 1},
                        "radius_km": 5,
                        "postcodes": ["1"],
                    }
                ]
            }
        )


def test_the_area_is_state_and_scores() -> None:
    near, far = placed("94110"), placed("10001")
    assert near.area is not None and near.area.in_area is True
    assert far.area is not None and far.area.in_area is False
    assert near.facts()["service_area"] == "in" and far.facts()["service_area"] == "out"
    # in-service-area (10) and near-a-branch (5, within 10 km)
    assert near.score_components["firmographic"] - far.score_components["firmographic"] == 15
    assert contact_fields(near)["properties"]["service_branch"] == "San Francisco"
    assert contact_fields(far)["properties"]["service_area"] == "out"


def test_the_check_is_redone_only_when_the_postcode_changes() -> None:
    state = placed("10001")
    other = {**form("10001", event_id="typeform:2"), "payload": form("10001")["payload"]}
    same = advance(state, other, MODEL, AREAS).state
    assert same.area is state.area or same.area == state.area
    moved = advance(state, form("94612", event_id="typeform:3"), MODEL, AREAS).state
    assert moved.area is not None and (moved.area.branch, moved.area.in_area) == ("East Bay", True)


def rep(rep_id: str, teams: list[str]) -> Rep:
    return Rep.model_validate(
        {
            "rep_id": rep_id,
            "name": rep_id.title(),
            "email": f"{rep_id}@northside.example",
            "teams": teams,
            "timezone": "America/Los_Angeles",
            "working_hours": {"start": "00:00", "end": "23:59", "days": ["mon"]},
        }
    )


ROSTER = {
    "sam": rep("sam", ["sf-metro"]),
    "eve": rep("eve", ["east-bay"]),
    "ivy": rep("ivy", ["inbound"]),
}


def test_routing_gives_the_lead_to_the_nearest_branchs_team() -> None:
    _, near = route(placed("94110"), ROSTER, {}, RULES, MONDAY_1500Z)
    assert (near.rep_id, near.rule) == ("sam", "nearest-branch")
    assert "2.7 km from San Francisco" in near.reason
    _, east = route(placed("94612"), ROSTER, {}, RULES, MONDAY_1500Z)
    assert east.rep_id == "eve"


def test_an_out_of_area_lead_is_given_to_nobody_on_purpose() -> None:
    _, far = route(placed("10001"), ROSTER, {}, RULES, MONDAY_1500Z)
    assert (far.rep_id, far.rule, far.held) == (None, "out-of-area", False)
    assert "4115" in far.reason or "km from" in far.reason


def test_unknown_and_teamless_areas_fall_through_to_inbound() -> None:
    _, unknown = route(placed("1000-001", country="PT"), ROSTER, {}, RULES, MONDAY_1500Z)
    assert unknown.rule == "emea" or unknown.rep_id == "ivy"
    south = placed("95112")  # South Bay has no reps on the roster
    _, fallback = route(south, ROSTER, {}, RULES, MONDAY_1500Z)
    assert (fallback.rep_id, fallback.rule) == ("ivy", "inbound")


def test_workflow_filters_see_the_area() -> None:
    condition = Condition.model_validate({"service_area_in": ["out"]})
    held, seen = condition.evaluate(placed("10001"), set(), {})
    assert held and seen["service_area"].startswith("out (postcode 10001 is")
    assert not condition.evaluate(placed("94110"), set(), {})[0]
    assert not condition.evaluate(ContactState(contact_id="c-2"), set(), {})[0]
    library = load_library()
    polite = library.current("out-of-service-area")
    web = library.current("new-web-lead")
    assert polite is not None and web is not None
    far = placed("10001")
    assert polite.entry.evaluate(far, set(), {})[0]
    assert not web.entry.evaluate(far, set(), {})[0]


def test_the_area_check_and_enrichment_are_audited_and_explained() -> None:
    before = ContactState(contact_id="c-1")
    event = form("94110")
    state = advance(before, event, MODEL, AREAS).state
    [entry] = qualification_audit(None, state, event)
    audit = entry[2]
    assert (audit["stage"], audit["decision"]) == ("area", "in_area")
    assert audit["inputs"]["distance_km"] == "2.7" and audit["inputs"]["team"] == "sf-metro"
    assert qualification_audit(state, state, {**event, "event_id": "x"}) == []
    enriched = state.model_copy(
        update={
            "profile": {**state.profile, "industry": "saas"},
            "profile_origin": {**state.profile_origin, "industry": "enrichment"},
        }
    )
    text = render(enriched, ["c-1"], [audit], MODEL)
    assert "service area: in area; postcode 94110 is 2.7 km from San Francisco" in text
    assert "enriched: industry=saas" in text
    assert "firmographic target-industry: industry=saas (enrichment) +10" in text
    assert "firmographic near-a-branch: distance_km=2.7 (service area) +5" in text
    assert "saw branch=San Francisco, distance_km=2.7, service_area=in" in text
