"""The contact-state stage's pure core: one event in, the new state and the score
decision out. Duplicates (an event id already seen) change nothing and decide nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.scoring import ScoreDecision, ScoringModel, score
from processors.state import ContactState, apply_event


@dataclass(frozen=True)
class Outcome:
    state: ContactState
    score: ScoreDecision | None  # None when the event was a duplicate


def advance(state: ContactState, event: dict[str, Any], model: ScoringModel) -> Outcome:
    if state.has_seen(event["event_id"]):
        return Outcome(state, None)
    state = apply_event(state, event)
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
