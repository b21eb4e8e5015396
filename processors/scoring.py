"""Lead scoring from a declarative model (``processors/rules/scoring.yaml``).

Behavioural points come from events, optionally under a condition on the payload and a
frequency requirement ("the third pricing-page view within seven days"); they decay with
a half-life measured in event time. Firmographic points come from the contact's
profile. Negative signals (unsubscribe, hard bounce, a competitor's domain) are rules
with negative points that, by default, do not decay. Subtotals and the total are capped.

``score(state, event, model)`` is pure: same inputs, same decision."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from processors.matching import EventType, payload_matches
from processors.state import Award, ContactState, ScoringState
from streams import rules as rule_files
from streams.rules import RuleModel, unique_names


class Frequency(RuleModel):
    count: int = Field(ge=2)
    within_days: float = Field(gt=0)


class BehaviourRule(RuleModel):
    """Points for an event, when its payload matches ``when`` (field equals value, or
    for ``*_contains`` keys, contains the text)."""

    name: str
    event: EventType
    points: float
    when: dict[str, str] = Field(default_factory=dict)
    frequency: Frequency | None = None
    decays: bool | None = None  # default: positive points decay, negative ones stay

    @property
    def decaying(self) -> bool:
        return self.points > 0 if self.decays is None else self.decays

    def matches(self, event: dict[str, Any]) -> bool:
        return event["event_type"] == self.event and payload_matches(event["payload"], self.when)


class FirmographicRule(RuleModel):
    """Points for a profile field: ``in`` a list, containing ``any`` of some words, or a
    number at least ``min`` (and below ``max``)."""

    name: str
    field: str
    points: float
    in_: list[str] | None = Field(None, alias="in")
    contains_any: list[str] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_test(self) -> FirmographicRule:
        tests = [
            self.in_ is not None,
            self.contains_any is not None,
            self.min is not None or self.max is not None,
        ]
        if sum(tests) != 1:
            raise ValueError("give exactly one of: in, contains_any, min/max")
        return self

    def matches(self, profile: dict[str, str]) -> bool:
        value = profile.get(self.field)
        if value is None:
            return False
        if self.in_ is not None:
            return value.lower() in {v.lower() for v in self.in_}
        if self.contains_any is not None:
            return any(word.lower() in value.lower() for word in self.contains_any)
        try:
            number = float(value)
        except ValueError:
            return False
        return (self.min is None or number >= self.min) and (self.max is None or number < self.max)


class Band(RuleModel):
    name: str
    min: float


class ScoringModel(RuleModel):
    version: int = 1
    half_life_days: float = Field(gt=0, description="Behavioural points halve in this time.")
    cap: float = Field(gt=0, description="The score never exceeds this.")
    behaviour_cap: float | None = Field(None, gt=0)
    firmographic_cap: float | None = Field(None, gt=0)
    meaningful_change: float = Field(5, ge=0, description="Smaller changes are not emitted.")
    bands: list[Band] = Field(default_factory=list)
    behaviour: list[BehaviourRule] = Field(default_factory=list)
    firmographic: list[FirmographicRule] = Field(default_factory=list)

    @field_validator("bands")
    @classmethod
    def _ascending(cls, bands: list[Band]) -> list[Band]:
        if [b.min for b in bands] != sorted(b.min for b in bands):
            raise ValueError("bands must be listed from the lowest min to the highest")
        return bands

    @model_validator(mode="after")
    def _unique_names(self) -> ScoringModel:
        unique_names([*self.behaviour, *self.firmographic], "rule")
        return self

    @cached_property
    def behaviour_by_event(self) -> dict[str, list[BehaviourRule]]:
        """The behaviour rules of each event type, in their order: an event is tried
        against its own type's few, not the model's every rule."""
        found: dict[str, list[BehaviourRule]] = {}
        for rule in self.behaviour:
            found.setdefault(rule.event, []).append(rule)
        return found

    def band_rank(self, band: str | None) -> int:
        """0 for no band, then 1, 2, ... from the lowest band up."""
        names = [b.name for b in self.bands]
        return names.index(band) + 1 if band in names else 0

    def band_for(self, score: float) -> str | None:
        band = None
        for candidate in self.bands:
            if score >= candidate.min:
                band = candidate.name
        return band


class ScoreDecision(BaseModel):
    score: float
    previous: float
    components: dict[str, float]
    band: str | None
    previous_band: str | None
    rules: list[str]

    @property
    def crossed_band(self) -> bool:
        return self.band != self.previous_band


def decayed(award: Award, now: datetime, half_life_days: float) -> float:
    if not award.decays:
        return award.points
    age_days = max((now - award.at).total_seconds(), 0.0) / 86400
    return award.points * math.pow(0.5, age_days / half_life_days)


def components_at(
    history: ScoringState, profile: dict[str, str], model: ScoringModel, now: datetime
) -> dict[str, float]:
    points = [decayed(a, now, model.half_life_days) for a in history.awards]
    return _components(points, profile, model)


def _components(
    points: list[float], profile: dict[str, str], model: ScoringModel
) -> dict[str, float]:
    """The score's components from the awards' points as of now."""
    positive = sum(max(p, 0) for p in points)
    negative = sum(min(p, 0) for p in points)
    # A rule on a field the profile lacks never matches: tested without a call.
    firmographic = sum(
        r.points for r in model.firmographic if r.field in profile and r.matches(profile)
    )
    if model.behaviour_cap is not None:
        positive = min(positive, model.behaviour_cap)
    if model.firmographic_cap is not None:
        firmographic = min(firmographic, model.firmographic_cap)
    return {"behaviour": positive, "negative": negative, "firmographic": firmographic}


def total(components: dict[str, float], model: ScoringModel) -> float:
    return round(min(max(sum(components.values()), 0.0), model.cap), 2)


def score(
    state: ContactState, event: dict[str, Any], model: ScoringModel
) -> tuple[ScoringState, ScoreDecision]:
    """The scoring history after ``event`` and the score as of the event's time.
    ``state`` is the contact after the event (its profile and service area feed
    firmographics)."""
    now: datetime = event["event_time"]
    # A new history, sharing with the state's only its awards (never changed in place):
    # a deep copy validated every award again, on every event.
    before = state.scoring
    awards, matches = list(before.awards), dict(before.matches)
    fired = []
    for rule in model.behaviour_by_event.get(event["event_type"], ()):
        if not rule.matches(event):
            continue
        if rule.frequency is not None:
            window = timedelta(days=rule.frequency.within_days)
            recent = [t for t in matches.get(rule.name, []) if now - t < window] + [now]
            matches[rule.name] = recent[-rule.frequency.count :]
            if len(recent) < rule.frequency.count:
                continue
            matches[rule.name] = []  # the next award needs a fresh run of matches
        awards.append(Award(rule=rule.name, points=rule.points, at=now, decays=rule.decaying))
        fired.append(rule.name)
    # Forget what has decayed to nothing, so the history stays small. Each award's points
    # are worked out once, for this and for the components.
    kept, points = [], []
    for award in awards:
        now_worth = decayed(award, now, model.half_life_days)
        if not award.decays or abs(now_worth) >= 0.01:
            kept.append(award)
            points.append(now_worth)
    # Most events change nothing of it (no rule of theirs fired, nothing wore off): the
    # history is kept as it is. Else model_copy, not model_construct (a loop in Python).
    if kept == before.awards and matches == before.matches:
        history = before
    else:
        history = before.model_copy(update={"awards": kept, "matches": matches})
    components = _components(points, state.facts(), model)
    new_score = total(components, model)
    return history, ScoreDecision(
        score=new_score,
        previous=state.score,
        components=components,
        band=model.band_for(new_score),
        previous_band=state.band,
        rules=fired,
    )


def is_meaningful(decision: ScoreDecision, model: ScoringModel) -> bool:
    return (
        decision.crossed_band or abs(decision.score - decision.previous) >= model.meaningful_change
    )


DEFAULT_MODEL = Path(__file__).parent / "rules" / "scoring.yaml"


def load_model(path: Path = DEFAULT_MODEL) -> ScoringModel:
    """The scoring model in ``path``; raises RuleFileError naming file, line and field."""
    return rule_files.load(path, ScoringModel)
