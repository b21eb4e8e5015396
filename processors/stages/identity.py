"""The identity stage (keyed by identifier; table ``identity``, and ``claimed``): resolves
each event to a contact id, claims the event's other identifiers, starts merges, and
re-keys the event by contact id onto events-by-contact. The decisions are
processors.identity's; this is their wiring to the tables."""

from __future__ import annotations

import json

from processors.identity import claim, resolve
from processors.stages.decoded import observe_age, record_of
from processors.state import identifiers_of
from streams import metrics
from streams.clock import Clock
from streams.engine import Decoded, Forwarded, Output, Refused
from streams.settings import Settings
from streams.tables import Table

# Identifiers remembered as claimed per key; an older one is claimed again if it recurs.
CLAIMED_PER_KEY = 50


class IdentityStage:
    def __init__(self, identity: Table, claimed: Table, settings: Settings, clock: Clock) -> None:
        self.identity = identity
        self.claimed = claimed  # identifier -> identifiers claimed with it (JSON)
        self.settings = settings
        self.clock = clock

    def on_event(self, item: Decoded) -> list[Output | Forwarded]:
        event = record_of(item)
        # The gateway refuses these already; an import or another producer may not. A time
        # far ahead would start clocks no later event could stop.
        arrived = max(self.clock.now(), event["received_time"])
        ahead = (event["event_time"] - arrived).total_seconds()
        if ahead > self.settings.max_event_skew_s:
            raise Refused(
                f"field event_time: {event['event_time'].isoformat()} is {ahead:.0f}s after "
                f"it arrived (max_event_skew_s is {self.settings.max_event_skew_s:g})"
            )
        ids = identifiers_of(event["identity"])
        key = (item.key or b"").decode() or ids[0]
        found = resolve(key, self.identity.get(key), ids)
        if found.minted:
            self.identity[key] = found.contact_id
        # Each identifier is claimed once with the key it came with: a claim answered
        # before (linked, or merged) gives the same answer again.
        before = json.loads(self.claimed.get(key) or "[]")
        new = [i for i in found.claims if i not in before]
        if new:
            self.claimed[key] = json.dumps([*before, *new][-CLAIMED_PER_KEY:])
        outputs: list[Output | Forwarded] = [
            (
                "claims",
                identifier,
                {
                    "identifier": identifier,
                    "contact_id": found.contact_id,
                    "event_id": event["event_id"],
                    "claimed_at": event["event_time"],
                },
            )
            for identifier in new
        ]
        # Forwarded as it came: the contact id is the key (Avro encoding is much of a
        # worker's time, and the event does not change).
        assert item.value is not None
        outputs.append(("by_contact", found.contact_id, item.value))
        metrics.labelled(
            metrics.EVENTS, "identity", event["event_type"], event["source_system"]
        ).inc()
        observe_age("identity", event)
        return outputs

    def on_claim(self, item: Decoded) -> list[Output]:
        request = record_of(item)
        identifier = request["identifier"]
        outcome = claim(identifier, self.identity.get(identifier), request["contact_id"])
        if outcome.linked or outcome.merge:
            self.identity[identifier] = outcome.owner
        if outcome.merge is None:
            return []
        merge = outcome.merge
        step = {
            "step": "REQUEST",
            "target": merge.loser,
            "other": merge.survivor,
            "identifier": identifier,
            "state": None,
            "timers": None,
            "workflows": None,
            "at": request["claimed_at"],
        }
        return [("merges", merge.loser, step)]
