"""Service areas (``processors/rules/service_area.yaml``): where the business works, as data.

Each branch serves either a circle (a centre and a radius in km) or a list of postcodes
(prefixes: ``"021"`` covers 02110 and 02139). A contact's postcode is geocoded offline
from the US ZIP centroids the ``zipcodes`` package ships (no network at run time; it
is US-only, so a centre-and-radius branch can only place US postcodes, while postcode
lists work for any country), and the distance to each centre is a haversine.

``check(profile, areas)`` is pure: (profile, rules) in, the contact's ``AreaCheck`` out.
A contact whose postcode cannot be placed is *unknown*, never out of area: only a
definite "outside every branch" sends a lead down the out-of-area path."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from streams import rules as rule_files
from streams.rules import RuleModel, unique_names

EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)


class Centre(RuleModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Branch(RuleModel):
    """One branch: its team takes the leads it serves."""

    name: str = Field(min_length=1)
    team: str = Field(min_length=1, description="The routing team of the branch's reps.")
    centre: Centre | None = None
    radius_km: float | None = Field(None, gt=0)
    postcodes: list[str] | None = Field(None, min_length=1, description="Postcode prefixes.")

    @model_validator(mode="after")
    def _one_shape(self) -> Branch:
        circle = self.centre is not None or self.radius_km is not None
        if circle and (self.centre is None or self.radius_km is None):
            raise ValueError("a circle needs both centre and radius_km")
        if circle == (self.postcodes is not None):
            raise ValueError("give exactly one of: centre with radius_km, or postcodes")
        return self

    def covers_postcode(self, postcode: str) -> bool:
        return any(postcode.startswith(normalise(p)) for p in self.postcodes or [])


class ServiceAreas(RuleModel):
    version: int = 1
    country: str = Field(
        "US", min_length=2, max_length=2, description="The country a bare postcode is in."
    )
    branches: list[Branch] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ServiceAreas:
        unique_names(self.branches, "branch")
        return self


class AreaCheck(BaseModel):
    """Where the contact is against the service areas; part of the contact's state."""

    postcode: str  # as the profile has it (the check is done again when it changes)
    country: str | None = None  # the profile's, when it has one
    in_area: bool | None  # None: the postcode could not be placed
    branch: str | None = None  # the serving branch, else the nearest one
    team: str | None = None
    distance_km: float | None = None  # to the branch's centre (None for postcode lists)
    reason: str = ""


def normalise(postcode: str) -> str:
    return postcode.strip().upper().replace(" ", "")


@cache
def _centroids() -> dict[str, tuple[float, float]]:
    """ZIP code -> (lat, lon), indexed once (the package itself scans a list per query).
    Read by two-digit prefix, a hundred small lists: the package's list_all() keeps its
    42,000 dicts for the life of the process, about 95 MB of a worker's memory."""
    import zipcodes  # the data loads on first use, not when a worker imports this module

    found: dict[str, tuple[float, float]] = {}
    for prefix in range(100):  # every ZIP code is five digits
        for z in zipcodes.similar_to(f"{prefix:02d}"):  # type: ignore[no-untyped-call]
            if z.get("lat") and z.get("long"):
                found[z["zip_code"]] = (float(z["lat"]), float(z["long"]))
    return found


def warm(areas: ServiceAreas) -> None:
    """Build the ZIP index now (seconds on a busy machine) if a branch needs it, so a
    worker pays for it at start, not on the first contact with a postcode."""
    if any(b.centre is not None for b in areas.branches):
        _centroids()


def geocode(postcode: str, country: str) -> tuple[float, float] | None:
    """The centroid of a postcode, or None when the bundled data has no such place."""
    if country.upper() != "US":
        return None
    zip5 = normalise(postcode).split("-")[0][:5]
    return _centroids().get(zip5)


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def check(profile: dict[str, str], areas: ServiceAreas) -> AreaCheck | None:
    """The contact's place against ``areas``; None when the profile has no postcode."""
    raw, country = profile.get("postcode", ""), profile.get("country")
    postcode = normalise(raw)
    if not postcode:
        return None

    def found(in_area: bool | None, reason: str, **more: object) -> AreaCheck:
        return AreaCheck.model_validate(
            {"postcode": raw, "country": country, "in_area": in_area, "reason": reason} | more
        )

    for branch in areas.branches:
        if branch.covers_postcode(postcode):
            return found(
                True,
                f"postcode {postcode} is on {branch.name}'s list",
                branch=branch.name,
                team=branch.team,
            )
    circles = [b for b in areas.branches if b.centre is not None and b.radius_km is not None]
    if not circles:  # every branch is a list, and none has it
        return found(False, f"postcode {postcode} is on no branch's list")
    point = geocode(postcode, country or areas.country)
    if point is None:
        return found(
            None, f"postcode {postcode} ({country or areas.country}) is not in the postcode data"
        )
    distances = sorted(
        (haversine_km(point, (b.centre.lat, b.centre.lon)), b.name, b)  # type: ignore[union-attr]
        for b in circles
    )
    serving = [(d, b) for d, _, b in distances if d <= (b.radius_km or 0)]
    distance, nearest = serving[0] if serving else (distances[0][0], distances[0][2])
    inside = bool(serving)
    radius = f"{nearest.radius_km:g} km"
    where = f"within {radius}" if inside else f"outside its {radius}"
    return found(
        inside,
        f"postcode {postcode} is {distance:.1f} km from {nearest.name} ({where})",
        branch=nearest.name,
        team=nearest.team,
        distance_km=round(distance, 1),
    )


def facts(area: AreaCheck | None) -> dict[str, str]:
    """The area as profile-like facts, for rules that test profile fields (scoring's
    firmographics, workflow entry filters): service_area in/out/unknown, branch,
    distance_km."""
    if area is None:
        return {}
    found = {"service_area": {True: "in", False: "out", None: "unknown"}[area.in_area]}
    if area.branch is not None:
        found["branch"] = area.branch
    if area.distance_km is not None:
        found["distance_km"] = f"{area.distance_km:g}"
    return found


DEFAULT_AREAS = Path(__file__).parent / "rules" / "service_area.yaml"


def load_areas(path: Path = DEFAULT_AREAS) -> ServiceAreas:
    """The service areas in ``path``; raises RuleFileError naming file, line and field."""
    return rule_files.load(path, ServiceAreas)
