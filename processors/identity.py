"""Identity resolution, the pure part: the same person arriving by phone, by e-mail and
by CRM id becomes one contact with one stable contact id.

The stage that runs it is keyed by identifier (``email:...``, ``phone:...``, ``crm:...``,
``ext:<system>:...``), with a table from identifier to contact id:

1. An event is resolved on its key (its strongest identifier): a known identifier gives
   its contact; an unknown one mints a contact id derived from it, so a replay mints
   the same id. (The stage passes an unknown key the contact the worker lately gave one
   of the event's other identifiers, when it has one: processors/stages/identity.py.)
2. Every other identifier the event carries is *claimed* for that contact through a
   repartition topic keyed by the identifier, so each lookup happens on the partition
   that owns the identifier (never a side call).
3. A claim on an unknown identifier links it; a claim on an identifier that belongs to
   another contact proves the two are one person: they merge into the smaller id (a
   rule both partitions reach without talking), and the merge is recorded.
4. The identifier table may still name a contact that an earlier merge retired. A merge
   therefore joins what the two ids have *become*: the contact stage follows each id's
   alias (always to a smaller id, so never in a cycle) before merging, and forwards a
   retired contact's events to its survivor."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from processors import profile as profiles
from processors.state import (
    PENDING_TASKS,
    RECENT_EVENT_IDS,
    TASKS_KEPT,
    ContactState,
    bounded_identifiers,
    kept_jobs,
    kept_meetings,
    kept_untimed,
)


def minted_contact_id(identifier: str) -> str:
    return "c-" + hashlib.sha256(identifier.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Resolution:
    contact_id: str
    minted: bool
    claims: tuple[str, ...]  # the event's other identifiers, to claim for contact_id


def resolve(key: str, known_contact: str | None, identifiers: list[str]) -> Resolution:
    contact_id = known_contact or minted_contact_id(key)
    others = tuple(i for i in identifiers if i != key)
    return Resolution(contact_id, known_contact is None, others)


@dataclass(frozen=True)
class Merge:
    survivor: str
    loser: str
    identifier: str  # the identifier both contacts turned out to share


@dataclass(frozen=True)
class ClaimOutcome:
    owner: str  # who the identifier belongs to afterwards
    linked: bool  # the identifier was new and is now linked
    merge: Merge | None


def claim(identifier: str, current_owner: str | None, claimant: str) -> ClaimOutcome:
    if current_owner is None:
        return ClaimOutcome(claimant, True, None)
    if current_owner == claimant:
        return ClaimOutcome(claimant, False, None)
    survivor, loser = sorted((current_owner, claimant))
    return ClaimOutcome(survivor, False, Merge(survivor, loser, identifier))


def merge_states(survivor: ContactState, loser: ContactState) -> ContactState:
    """One contact from two: the survivor's values win where both have one; histories,
    identifiers, deals and touches are united; consent restrictions from either hold."""
    merged = survivor.model_copy(deep=True)
    merged.identifiers = bounded_identifiers(
        list(dict.fromkeys([*survivor.identifiers, *loser.identifiers]))
    )
    merged.profile, merged.profile_origin = profiles.merged(
        (survivor.profile, survivor.profile_origin), (loser.profile, loser.profile_origin)
    )
    merged.lifecycle_stage = survivor.lifecycle_stage or loser.lifecycle_stage
    merged.owner_id = survivor.owner_id or loser.owner_id
    # Whoever has the owner has the routing outcome; else a pending request stands.
    if survivor.owner_id or not loser.owner_id:
        merged.routing = survivor.routing or loser.routing
    else:
        merged.routing = loser.routing
    for touches, other in (
        (merged.last_inbound, loser.last_inbound),
        (merged.last_outbound, loser.last_outbound),
    ):
        for channel, at in other.items():
            if channel not in touches or touches[channel] < at:
                touches[channel] = at
    merged.open_deals = loser.open_deals | survivor.open_deals
    merged.jobs = kept_jobs(loser.jobs | survivor.jobs)
    merged.consent.email_opt_out |= loser.consent.email_opt_out
    merged.consent.sms_opt_out |= loser.consent.sms_opt_out
    merged.consent.email_bounced |= loser.consent.email_bounced
    merged.workflows = loser.workflows | survivor.workflows
    held = {t.task_id for t in survivor.pending_tasks}
    merged.pending_tasks = [
        *survivor.pending_tasks,
        *(t for t in loser.pending_tasks if t.task_id not in held),
    ][-PENDING_TASKS:]
    merged.tags = [*survivor.tags, *(t for t in loser.tags if t not in survivor.tags)]
    merged.meetings = kept_meetings(loser.meetings | survivor.meetings)
    mine = {t.task_id for t in survivor.tasks}
    merged.tasks = sorted(
        [*survivor.tasks, *(t for t in loser.tasks if t.task_id not in mine)], key=lambda t: t.at
    )[-TASKS_KEPT:]
    calls = [c for c in (survivor.last_call, loser.last_call) if c is not None]
    merged.last_call = max(calls, key=lambda c: c.at) if calls else None
    merged.untimed_event_ids = kept_untimed(
        {**loser.untimed_event_ids, **survivor.untimed_event_ids}
    )
    seen = set(survivor.recent_event_ids)
    merged.recent_event_ids = [
        *survivor.recent_event_ids,
        *(e for e in loser.recent_event_ids if e not in seen),
    ][-RECENT_EVENT_IDS:]
    awards = {(a.rule, a.at): a for a in (*loser.scoring.awards, *survivor.scoring.awards)}
    merged.scoring.awards = sorted(awards.values(), key=lambda a: a.at)
    for rule, times in loser.scoring.matches.items():
        merged.scoring.matches[rule] = sorted({*merged.scoring.matches.get(rule, []), *times})
    firsts = [t for t in (survivor.first_seen, loser.first_seen) if t is not None]
    lasts = [t for t in (survivor.last_event_time, loser.last_event_time) if t is not None]
    merged.first_seen = min(firsts) if firsts else None
    merged.last_event_time = max(lasts) if lasts else None
    return merged
