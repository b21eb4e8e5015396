"""Conditions on a contact's state: a workflow's entry filter, its branch cases and its
goal state. Each is judged on the contact's current state (stage, score, owner, consent,
tags, other workflows, service area) and the triggering event, and says what it saw, for
the audit entry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from processors.area import facts as area_facts
from processors.matching import payload_matches
from processors.state import ContactState
from streams.rules import RuleModel

ContactChannel = Literal["EMAIL", "SMS"]


class Condition(RuleModel):
    """Every condition given holds. Used as the entry filter, in branches and as a goal.
    ``in_workflow``/``not_in_workflow`` look at the contact's other running workflows."""

    everyone: bool | None = Field(
        None, description="An entry filter that lets every contact in says so explicitly."
    )
    lifecycle_stage_in: list[str] | None = None
    lifecycle_stage_not_in: list[str] | None = None
    band_in: list[str] | None = None
    min_score: float | None = None
    max_score: float | None = None
    has_owner: bool | None = None
    has_open_deal: bool | None = None
    deal_stage_in: list[str] | None = None
    can_receive: ContactChannel | None = Field(
        None, description="The contact has an address on the channel and consents to it."
    )
    has_tag: list[str] | None = None
    lacks_tag: list[str] | None = None
    in_workflow: list[str] | None = None
    not_in_workflow: list[str] | None = None
    has_run: list[str] | None = Field(None, description="Went through any of these before.")
    has_not_run: list[str] | None = Field(None, description="Never entered any of these.")
    profile: dict[str, str | list[str]] | None = None
    service_area_in: list[Literal["in", "out", "unknown"]] | None = Field(
        None, description="Where the contact is against the service areas (processors/area.py)."
    )
    trigger: dict[str, str | list[str]] | None = Field(
        None, description="Conditions on the payload of the event that started the run."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        given = self.model_dump(exclude_none=True)
        if not given:
            raise ValueError("an empty condition: give one, or `everyone: true`")
        if self.everyone is False:
            raise ValueError("`everyone: false` lets nobody in: remove the workflow instead")
        if self.everyone and len(given) > 1:
            raise ValueError("`everyone: true` with other conditions: remove one or the other")
        return self

    def workflows(self) -> list[str]:
        named = (self.in_workflow, self.not_in_workflow, self.has_run, self.has_not_run)
        return [name for names in named for name in names or []]

    def evaluate(
        self,
        state: ContactState,
        running: set[str],
        trigger: dict[str, str],
        ran: set[str] | None = None,
    ) -> tuple[bool, dict[str, str]]:
        """Whether it holds, and the value each condition saw (for the audit entry).
        ``running``: the contact's workflows now; ``ran``: those it ever entered."""
        seen: dict[str, str] = {}
        held = True

        def check(name: str, value: Any, ok: bool) -> None:
            nonlocal held
            seen[name] = str(value)
            held = held and ok

        deal_stages = sorted({d.stage for d in state.open_deals.values()})
        if self.everyone:
            check("everyone", True, True)
        if self.lifecycle_stage_in is not None:
            stage = state.lifecycle_stage
            check("lifecycle_stage", stage, stage in self.lifecycle_stage_in)
        if self.lifecycle_stage_not_in is not None:
            stage = state.lifecycle_stage
            check("lifecycle_stage", stage, stage not in self.lifecycle_stage_not_in)
        if self.band_in is not None:
            check("band", state.band, state.band in self.band_in)
        if self.min_score is not None:
            check("score", f"{state.score:g}", state.score >= self.min_score)
        if self.max_score is not None:
            check("score", f"{state.score:g}", state.score <= self.max_score)
        if self.has_owner is not None:
            check("owner", state.owner_id, (state.owner_id is not None) == self.has_owner)
        if self.has_open_deal is not None:
            check("open_deals", len(deal_stages), bool(deal_stages) == self.has_open_deal)
        if self.deal_stage_in is not None:
            check(
                "deal_stages",
                ",".join(deal_stages),
                any(s in self.deal_stage_in for s in deal_stages),
            )
        if self.can_receive is not None:
            address, problem = state.address(self.can_receive)
            check(f"can_receive.{self.can_receive}", problem or "yes", address is not None)
        if self.has_tag is not None:
            check("tags", ",".join(state.tags), all(t in state.tags for t in self.has_tag))
        if self.lacks_tag is not None:
            check("tags", ",".join(state.tags), not any(t in state.tags for t in self.lacks_tag))
        if self.in_workflow is not None:
            check(
                "workflows",
                ",".join(sorted(running)),
                any(w in running for w in self.in_workflow),
            )
        if self.not_in_workflow is not None:
            check(
                "workflows",
                ",".join(sorted(running)),
                not any(w in running for w in self.not_in_workflow),
            )
        entered = ran or set()
        if self.has_run is not None:
            shown = ",".join(sorted(entered))
            check("ran", shown, any(w in entered for w in self.has_run))
        if self.has_not_run is not None:
            shown = ",".join(sorted(entered))
            check("ran", shown, not any(w in entered for w in self.has_not_run))
        if self.profile is not None:
            for key in self.profile:
                seen[f"profile.{key}"] = str(state.profile.get(key))
            held = held and payload_matches(state.profile, self.profile)
        if self.service_area_in is not None:
            where = area_facts(state.area).get("service_area", "unknown")
            shown = where + (f" ({state.area.reason})" if state.area else "")
            check("service_area", shown, where in self.service_area_in)
        if self.trigger is not None:
            for key in self.trigger:
                seen[f"trigger.{key}"] = str(trigger.get(key))
            held = held and payload_matches(trigger, self.trigger)
        return held, seen
