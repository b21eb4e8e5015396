"""The contact-state stage's pure core: one event in, the new state and the score
decision out. Duplicates (an event id already seen) change nothing and decide nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.area import ServiceAreas, check
from processors.scoring import ScoreDecision, ScoringModel, score
from processors.state import ContactState, applied


@dataclass(frozen=True)
class Outcome:
    state: ContactState
    score: ScoreDecision | None  # None when the event was a duplicate


def advance(
    state: ContactState,
    event: dict[str, Any],
    model: ScoringModel,
    areas: ServiceAreas | None = None,
) -> Outcome:
    if state.has_seen(event["event_id"]):
        return Outcome(state, None)
    state = applied(state, event)  # not seen: checked just above
    if areas is not None:
        state = placed(state, areas)
    history, decision = score(state, event, model)
    state = state.model_copy(
        update={
            "scoring": history,
            "score": decision.score,
            "score_components": decision.components,
            "band": decision.band,
        }
    )
    return Outcome(state, decision)


def placed(state: ContactState, areas: ServiceAreas) -> ContactState:
    """The state with its service-area check, done again only when the postcode or the
    country changed (a string compare on every other event, a dict lookup on those)."""
    postcode = state.profile.get("postcode")
    where = (postcode, state.profile.get("country"))
    if state.area is not None and (state.area.postcode, state.area.country) == where:
        return state
    if postcode is None and state.area is None:
        return state
    return state.model_copy(update={"area": check(state.profile, areas)})
