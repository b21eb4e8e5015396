"""Lead routing from declarative rules (``processors/rules/routing.yaml``) over a rep
roster that arrives as a stream (a compacted topic), not a file read at start.

The first rule whose conditions match the contact names the reps to choose from (a
team, or the owner of a named account); among those, the reps who are available (not
out of office, inside their working hours in their own time zone, under their
capacity of open leads) are chosen by smooth weighted round-robin, which is exactly
proportional to the weights over any run of leads.

``route(...)`` is pure: (contact, roster, rotation state, rules, time) in, decision out."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, field_validator, model_validator

from processors.hours import WEEKDAYS, Weekday, known_zone
from processors.state import ContactState
from streams import rules as rule_files
from streams.rules import RuleModel, unique_names

AreaStatus = Literal["in", "out", "unknown"]


class WorkingHours(RuleModel):
    start: time = time(9, 0)
    end: time = time(17, 30)
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))

    @model_validator(mode="after")
    def _ordered(self) -> WorkingHours:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Rep(RuleModel):
    """One roster record: what the CRM feed or an admin command last said about a rep."""

    rep_id: str
    name: str
    email: str
    teams: list[str] = Field(default_factory=list)
    weight: int = Field(1, ge=1)
    capacity: int = Field(50, ge=0, description="Most open leads at once.")
    open_leads: int = Field(0, ge=0)
    timezone: str = "UTC"
    working_hours: WorkingHours = Field(default_factory=WorkingHours)
    out_of_office: bool = False
    named_accounts: list[str] = Field(default_factory=list, description="Company e-mail domains.")
    manager_id: str | None = None

    _zone = field_validator("timezone")(known_zone)

    def working_at(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        hours = self.working_hours
        return WEEKDAYS[local.weekday()] in hours.days and hours.start <= local.time() < hours.end

    def has_room(self) -> bool:
        return self.open_leads < self.capacity


class Conditions(RuleModel):
    country_in: list[str] | None = None
    region_in: list[str] | None = None
    postcode_prefix_in: list[str] | None = None
    industry_in: list[str] | None = None
    deal_size_min: float | None = None
    deal_size_max: float | None = None
    min_score: float | None = None
    named_account: bool | None = None
    service_area_in: list[AreaStatus] | None = Field(
        None, description="in, out or unknown (processors/area.py)."
    )
    max_distance_km: float | None = Field(None, gt=0)

    def match(self, contact: ContactState, roster: dict[str, Rep]) -> bool:
        profile = {k: v.lower() for k, v in contact.profile.items()}

        def within(field: str, allowed: list[str] | None) -> bool:
            return allowed is None or profile.get(field, "") in {a.lower() for a in allowed}

        if not (
            within("country", self.country_in)
            and within("region", self.region_in)
            and within("industry", self.industry_in)
        ):
            return False
        if self.postcode_prefix_in is not None and not any(
            profile.get("postcode", "").startswith(p.lower()) for p in self.postcode_prefix_in
        ):
            return False
        size = deal_size(contact)
        if self.deal_size_min is not None and (size is None or size < self.deal_size_min):
            return False
        if self.deal_size_max is not None and (size is None or size >= self.deal_size_max):
            return False
        if self.min_score is not None and contact.score < self.min_score:
            return False
        if self.service_area_in is not None and area_status(contact) not in self.service_area_in:
            return False
        if self.max_distance_km is not None:
            distance = contact.area.distance_km if contact.area else None
            if distance is None or distance > self.max_distance_km:
                return False
        if self.named_account is not None:
            return (account_owner(contact, roster) is not None) == self.named_account
        return True


class Rule(RuleModel):
    """``assign``: ``named_account_owner``; ``branch_team``, the team of the branch that
    serves the contact's area (processors/area.py); or ``nobody``, a declared decision
    not to assign (an out-of-area lead)."""

    name: str
    when: Conditions = Field(default_factory=Conditions)
    team: str | None = None
    assign: Literal["named_account_owner", "branch_team", "nobody"] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.team is None) == (self.assign is None):
            raise ValueError("give exactly one of: team, assign")
        return self


class RoutingRules(RuleModel):
    version: int = 1
    after_hours: Literal["assign_anyway", "hold"] = Field(
        "assign_anyway",
        description="When no eligible rep is working now: assign among those with room, "
        "or hold the lead until someone is.",
    )
    route_from_band: str | None = Field(
        "MQL",
        description="A lead without an owner is routed once its score reaches this "
        "band (a band of the scoring model); null routes every new lead.",
    )
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        unique_names(rules, "rule")
        return rules


# What routing reads of a contact: its rules (profile, score, deals, area, owner), the new
# lead's notification (name, identifiers, band, recent inbound) and the decision's audit.
# A routing request carries only these: the whole state was about 2.3 KB a request.
ROUTED_FIELDS = frozenset(
    {
        "contact_id",
        "identifiers",
        "profile",
        "score",
        "band",
        "area",
        "open_deals",
        "owner_id",
        "last_inbound",
    }
)


def deal_size(contact: ContactState) -> float | None:
    amounts = [d.amount_minor / 100 for d in contact.open_deals.values() if d.amount_minor]
    if amounts:
        return max(amounts)
    try:
        return float(contact.profile["deal_size"])
    except (KeyError, ValueError):
        return None


def area_status(contact: ContactState) -> AreaStatus:
    area = contact.area
    if area is None or area.in_area is None:
        return "unknown"
    return "in" if area.in_area else "out"


def account_owner(contact: ContactState, roster: dict[str, Rep]) -> Rep | None:
    domain = contact.profile.get("email_domain", "").lower()
    if not domain:
        return None
    return next(
        (rep for rep in roster.values() if domain in {d.lower() for d in rep.named_accounts}), None
    )


class Assignment(BaseModel):
    rep_id: str | None
    rule: str | None
    reason: str
    considered: list[str] = Field(default_factory=list)
    held: bool = False


def route(
    contact: ContactState,
    roster: dict[str, Rep],
    rotation: dict[str, int],
    rules: RoutingRules,
    now: datetime,
) -> tuple[dict[str, int], Assignment]:
    """Choose a rep for ``contact``; returns the new rotation state and the decision.

    ``rotation`` holds each rep's current weight in smooth weighted round-robin; it
    changes only when a rep is chosen. A contact that has an owner is being reassigned
    (an SLA escalation): its owner is not chosen again."""
    if contact.owner_id is not None:
        roster = {rep_id: rep for rep_id, rep in roster.items() if rep_id != contact.owner_id}
    for rule in rules.rules:
        if not rule.when.match(contact, roster):
            continue
        if rule.assign == "named_account_owner":
            owner = account_owner(contact, roster)
            assert owner is not None  # the rule's conditions required one
            if owner.out_of_office:
                continue  # fall through to the next rule
            return rotation, Assignment(
                rep_id=owner.rep_id,
                rule=rule.name,
                considered=[owner.rep_id],
                reason=f"{contact.profile.get('email_domain')} is a named account of {owner.name}",
            )
        if rule.assign == "nobody":
            return rotation, Assignment(
                rep_id=None,
                rule=rule.name,
                reason=f"rule {rule.name}: no rep is assigned"
                + (f"; {contact.area.reason}" if contact.area else ""),
            )
        team, branch_note = rule.team, ""
        if rule.assign == "branch_team":
            team = contact.area.team if contact.area and contact.area.in_area else None
            if team is None:
                continue
            assert contact.area is not None
            branch_note = f" ({contact.area.reason})"
        members = [rep for rep in roster.values() if team in rep.teams]
        available = [rep for rep in members if not rep.out_of_office and rep.has_room()]
        working = [rep for rep in available if rep.working_at(now)]
        candidates = working
        why = f"team {team}" + branch_note + ", working now"
        if not working and available:
            if rules.after_hours == "hold":
                return rotation, Assignment(
                    rep_id=None,
                    rule=rule.name,
                    held=True,
                    considered=sorted(r.rep_id for r in available),
                    reason=f"nobody in team {team} is working now; held until someone is",
                )
            candidates, why = available, f"team {team}, nobody working now, assigned anyway"
        if not candidates:
            continue
        chosen, rotation = smooth_weighted_pick(candidates, rotation)
        return rotation, Assignment(
            rep_id=chosen.rep_id,
            rule=rule.name,
            considered=sorted(r.rep_id for r in candidates),
            reason=f"rule {rule.name}: {why}; weighted round-robin among "
            f"{len(candidates)} eligible",
        )
    return rotation, Assignment(
        rep_id=None, rule=None, reason="no rule matched with an available rep"
    )


def smooth_weighted_pick(
    candidates: list[Rep], rotation: dict[str, int]
) -> tuple[Rep, dict[str, int]]:
    """Nginx's smooth weighted round-robin: each candidate gains its weight, the highest
    is chosen and loses the sum. Over any window of sum(weights) picks among the same
    candidates each is chosen exactly weight times, without bursts."""
    current = dict(rotation)
    for rep in candidates:
        current[rep.rep_id] = current.get(rep.rep_id, 0) + rep.weight
    chosen = max(candidates, key=lambda rep: (current[rep.rep_id], rep.rep_id))
    current[chosen.rep_id] -= sum(rep.weight for rep in candidates)
    return chosen, current


def rep_from_record(record: dict[str, Any]) -> Rep:
    """A roster record (schemas/rep.avsc) as a Rep."""
    hours = WorkingHours.model_validate(
        {"start": record["work_start"], "end": record["work_end"], "days": record["work_days"]}
    )
    fields = {k: v for k, v in record.items() if not k.startswith("work_")}
    return Rep.model_validate(fields | {"working_hours": hours})


def rep_record(rep: Rep) -> dict[str, Any]:
    fields = rep.model_dump(exclude={"working_hours"})
    hours = rep.working_hours
    return fields | {
        "work_start": hours.start.strftime("%H:%M"),
        "work_end": hours.end.strftime("%H:%M"),
        "work_days": list(hours.days),
    }


class Roster(RuleModel):
    """A roster file, for `switchboard roster load`."""

    reps: list[Rep] = Field(min_length=1)


DEFAULT_RULES = Path(__file__).parent / "rules" / "routing.yaml"
EXAMPLE_ROSTER = Path(__file__).parent / "rules" / "roster.example.yaml"


def load_roster(path: Path) -> Roster:
    """A roster file; raises RuleFileError naming file, line and field."""
    return rule_files.load(path, Roster)


def load_rules(path: Path = DEFAULT_RULES) -> RoutingRules:
    """The routing rules in ``path``; raises RuleFileError naming file, line and field."""
    return rule_files.load(path, RoutingRules)
