"""The contact stage's SLA clocks: the ``timers`` table, this worker's schedule of them,
and what the stage does when something happens to a contact (start, stop or cancel its
clocks), when a due notice arrives (fire the escalation step once), and when two
contacts merge (the survivor takes over the retired contact's clocks).

The policies are pure (processors.sla); this module keeps their state in the table,
keeps the schedule in step with it, and sends what they decide."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors import sla, timers
from processors.records import audit_entry, firing_outputs, timer_change_audit
from processors.state import ContactState
from streams import metrics
from streams.clock import Clock
from streams.engine import Engine, Output
from streams.settings import Settings


class SlaClocks:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        policies: sla.SlaPolicies,
        clock: Clock,
    ) -> None:
        # Running timers per contact (sla.TimerBook JSON), co-partitioned with contacts.
        self.table = engine.table("timers")
        self.schedule = timers.Schedule()
        self.policies = policies
        declare_policies(policies)
        self.clock = clock
        timers.attach(engine, self.table, self.schedule, clock, settings.timer_tick_s)

    def load(self, contact_id: str) -> sla.TimerBook:
        stored = self.table.get(contact_id)
        return sla.TimerBook() if stored is None else sla.TimerBook.model_validate_json(stored)

    def store(self, contact_id: str, book: sla.TimerBook, partition: int) -> None:
        if book.timers:
            book.partition = partition
            self.table[contact_id] = book.model_dump_json(exclude_defaults=True)
        elif contact_id in self.table:
            del self.table[contact_id]

    def on_triggers(
        self, state: ContactState, triggers: list[dict[str, Any]], partition: int
    ) -> list[Output]:
        """Start, stop or cancel the contact's clocks for what just happened."""
        contact_id = state.contact_id
        book = self.load(contact_id)
        changed = False
        outputs: list[Output] = []
        for trigger in triggers:
            book, changes = sla.on_event(self.policies, book, state, trigger)
            for change in changes:
                changed = True
                timer = change.timer
                audit = timer_change_audit(contact_id, change, trigger["event_id"])
                outputs.append(("audit", contact_id, audit))
                if change.change in ("started", "restarted"):
                    self.schedule.put(
                        contact_id, timer.timer_id, timer.due_at, timer.level, partition
                    )
                    metrics.labelled(metrics.TIMERS_SCHEDULED, timer.policy).inc()
                    continue
                self.schedule.discard(contact_id, timer.timer_id)
                metrics.labelled(metrics.TIMERS_CANCELLED, timer.policy, change.change).inc()
                policy = self.policies.policy(timer.policy)
                if change.change == "stopped" and policy and policy.kind == "first_touch":
                    waited = (change.at - timer.started_at).total_seconds()
                    metrics.labelled(metrics.TIME_TO_FIRST_TOUCH, timer.policy).observe(waited)
        if changed:
            self.store(contact_id, book, partition)
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
        self.store(contact_id, after, partition)
        if firing is None:
            return None, []
        policy = firing.timer.policy
        metrics.TIMERS_FIRED.labels(policy=policy).inc()
        metrics.SLA_BREACHES.labels(policy=policy, level=str(firing.level)).inc()
        metrics.TIMER_LATENESS.labels(policy=policy).observe(firing.lateness.total_seconds())
        following = after.timers.get(key)
        if following is not None:
            self.schedule.put(contact_id, key, following.due_at, following.level, partition)
        return firing, firing_outputs(state, firing, now)

    def retire(self, contact_id: str, partition: int) -> str | None:
        """A contact merged into another: its clocks leave with it (JSON, or None)."""
        book = self.load(contact_id)
        for key in book.timers:
            self.schedule.discard(contact_id, key)
        self.store(contact_id, sla.TimerBook(), partition)
        return book.model_dump_json() if book.timers else None

    def adopt(
        self, contact_id: str, retired: str, stored: str, at: datetime, partition: int
    ) -> list[Output]:
        """The survivor of a merge takes over the retired contact's running clocks."""
        outputs: list[Output] = []
        theirs = sla.TimerBook.model_validate_json(stored)
        book, adopted, dropped = sla.merge_books(self.load(contact_id), theirs)
        self.store(contact_id, book, partition)
        for timer in dropped:
            self.schedule.discard(contact_id, timer.timer_id)
            metrics.TIMERS_CANCELLED.labels(policy=timer.policy, reason="merged").inc()
            reason = f"merged with {retired}: the clock that started first stands"
            change = sla.TimerChange("cancelled", timer, reason, at)
            audit = timer_change_audit(contact_id, change, timer.cause)
            outputs.append(("audit", contact_id, audit))
        for timer in adopted:
            self.schedule.put(contact_id, timer.timer_id, timer.due_at, timer.level, partition)
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
