"""The contact stage's SLA clocks: the ``timers`` table, this worker's schedule of them,
and what the stage does when something happens to a contact (start, stop or cancel its
clocks), when a due notice arrives (fire the escalation step once), and when two
contacts merge (the survivor takes over the retired contact's clocks).

The policies are pure (processors.sla); this module keeps their state in the table (a
processors.timers.TimerTable, which keeps the schedule in step with it) and sends what
they decide."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors import sla, timers
from processors.matching import EventMatch
from processors.records.base import audit_entry
from processors.records.sla import firing_outputs, timer_change_audit
from processors.state import ContactState
from streams import metrics
from streams.clock import Clock
from streams.engine import Engine, Output
from streams.settings import Settings


class SlaClocks(timers.TimerTable[sla.TimerBook]):
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        policies: sla.SlaPolicies,
        clock: Clock,
    ) -> None:
        # Running timers per contact (sla.TimerBook JSON).
        super().__init__(
            engine, settings, clock, "timers", sla.TimerBook, timers.stored_timers, "sla"
        )
        self.policies = policies
        self._by_type = by_event_type(policies)
        declare_policies(policies)

    def timers_of(self, book: sla.TimerBook) -> dict[str, tuple[datetime, int]]:
        return {key: (timer.due_at, timer.level) for key, timer in book.timers.items()}

    def kept(self, book: sla.TimerBook) -> bool:
        return bool(book.timers)

    def on_triggers(
        self, state: ContactState, triggers: list[dict[str, Any]], partition: int
    ) -> list[Output]:
        """Start, stop or cancel the contact's clocks for what just happened."""
        named = [
            (t, self._by_type[t["event_type"]])
            for t in triggers
            if t["event_type"] in self._by_type
        ]
        if not named:
            return []
        contact_id = state.contact_id
        before = book = self.load(contact_id)
        changed = False
        outputs: list[Output] = []
        for trigger, policies in named:
            book, changes = sla.on_event(policies, book, state, trigger)
            for change in changes:
                changed = True
                timer = change.timer
                audit = timer_change_audit(contact_id, change, trigger["event_id"])
                outputs.append(("audit", contact_id, audit))
                if change.change in ("started", "restarted"):
                    metrics.labelled(metrics.TIMERS_SCHEDULED, timer.policy).inc()
                    continue
                metrics.labelled(metrics.TIMERS_CANCELLED, timer.policy, change.change).inc()
                policy = self.policies.policy(timer.policy)
                if change.change == "stopped" and policy and policy.kind == "first_touch":
                    waited = (change.at - timer.started_at).total_seconds()
                    metrics.labelled(metrics.TIME_TO_FIRST_TOUCH, timer.policy).observe(waited)
        if changed:
            self.save(contact_id, before, book, partition)
        return outputs

    def on_due(
        self, contact_id: str, notice: dict[str, Any], partition: int, state: ContactState
    ) -> tuple[sla.Firing | None, list[Output]]:
        """Fire the escalation step a due notice announces, once (sla.on_due ignores a
        notice that no longer matches the timer); the step fired, if one did, and what it
        sends."""
        book = self.load(contact_id)
        now = self.clock.now()
        key = notice["timer_id"]
        after, firing = sla.on_due(
            self.policies, book, key, notice["due_at"], notice["escalation_level"], now
        )
        if after is book:
            return None, []
        self.save(contact_id, book, after, partition)
        if firing is None:
            return None, []
        policy = firing.timer.policy
        metrics.TIMERS_FIRED.labels(policy=policy).inc()
        metrics.SLA_BREACHES.labels(policy=policy, level=str(firing.level)).inc()
        metrics.TIMER_LATENESS.labels(policy=policy).observe(firing.lateness.total_seconds())
        return firing, firing_outputs(state, firing, now)

    def adopt(
        self, contact_id: str, retired: str, stored: str, at: datetime, partition: int
    ) -> list[Output]:
        """The survivor of a merge takes over the retired contact's running clocks."""
        outputs: list[Output] = []
        theirs = sla.TimerBook.model_validate_json(stored)
        ours = self.load(contact_id)
        book, adopted, dropped = sla.merge_books(ours, theirs)
        self.save(contact_id, ours, book, partition)
        for timer in dropped:
            metrics.TIMERS_CANCELLED.labels(policy=timer.policy, reason="merged").inc()
            reason = f"merged with {retired}: the clock that started first stands"
            change = sla.TimerChange("cancelled", timer, reason, at)
            audit = timer_change_audit(contact_id, change, timer.cause)
            outputs.append(("audit", contact_id, audit))
        for timer in adopted:
            audit = audit_entry(
                contact_id,
                "sla",
                "sla_transferred",
                f"{timer.policy}: the clock of {retired} goes on here (merged)",
                {"policy": timer.policy, "timer_id": timer.timer_id, "from": retired},
                [timer.cause],
                at,
            )
            outputs.append(("audit", contact_id, audit))
        return outputs


def by_event_type(policies: sla.SlaPolicies) -> dict[str, sla.SlaPolicies]:
    """Event type -> the policies that start or stop on it, in the file's order, each
    with only its matches of that type. The others change no clock for an event of that
    type, and matching every policy at every event was most of sla.on_event's time."""

    def of_type(matches: list[EventMatch], event_type: str) -> list[EventMatch]:
        return [m for m in matches if m.event == event_type]

    def narrowed(event_type: str) -> list[sla.Policy]:
        found = []
        for p in policies.policies:
            starts, stops = of_type(p.starts_on, event_type), of_type(p.stops_on, event_type)
            if starts or stops:
                found.append(p.model_copy(update={"starts_on": starts, "stops_on": stops}))
        return found

    types = {m.event for p in policies.policies for m in [*p.starts_on, *p.stops_on]}
    return {t: policies.model_copy(update={"policies": narrowed(t)}) for t in types}


def declare_policies(policies: sla.SlaPolicies) -> None:
    for policy in policies.policies:
        name = {"policy": policy.name}
        for metric in (metrics.TIMERS_SCHEDULED, metrics.TIMERS_FIRED, metrics.TIMER_LATENESS):
            metrics.declare(metric, [name])
        reasons = ("stopped", "cancelled", "merged")
        metrics.declare(metrics.TIMERS_CANCELLED, ({**name, "reason": r} for r in reasons))
        levels = range(1, len(policy.escalations) + 1)
        metrics.declare(metrics.SLA_BREACHES, ({**name, "level": str(n)} for n in levels))
        if policy.kind == "first_touch":
            metrics.declare(metrics.TIME_TO_FIRST_TOUCH, [name])
