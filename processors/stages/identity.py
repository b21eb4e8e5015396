"""The identity stage (keyed by identifier; table ``identity``, and ``claimed``): resolves
each event to a contact id, claims the event's other identifiers, starts merges, and
re-keys the event by contact id onto events-by-contact. The decisions are
processors.identity's; this is their wiring to the tables."""

from __future__ import annotations

import json
from collections import OrderedDict

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

# Identifiers this worker resolved or claimed lately, remembered at most (oldest forgotten).
RECENT_IDENTIFIERS = 50_000


class IdentityStage:
    def __init__(self, identity: Table, claimed: Table, settings: Settings, clock: Clock) -> None:
        self.identity = identity
        self.claimed = claimed  # identifier -> identifiers claimed with it (JSON)
        self.settings = settings
        self.clock = clock
        # identifier -> the contact this worker last resolved or claimed it for, whatever
        # partition it is on. Behind a backlog the claims wait behind the events (one
        # fetch queue), so an event keyed by an identifier the table does not know yet
        # minted a contact of its own, only for a merge to retire it moments later: 18%
        # of the feed's events did. Such an event now resolves to the contact one of its
        # identifiers was lately resolved or claimed for, as the merge would have made
        # it. An entry is a hint, not the truth: the table wins where it knows the key,
        # and a stale or aborted entry names a contact that the event's claims then
        # merge, as any two contacts sharing an identifier. An OrderedDict, as in
        # streams.tables.Parsed: a dict's oldest key, once many were deleted at its
        # front, is found by a scan past every deleted slot.
        self.recent: OrderedDict[str, str] = OrderedDict()

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
        known = self.identity.get(key)
        recent = self.recent
        hint = known or next((recent[i] for i in (key, *ids) if i in recent), None)
        found = resolve(key, hint, ids)
        if known is None:
            self.identity[key] = found.contact_id
        for identifier in ids:
            recent[identifier] = found.contact_id
            recent.move_to_end(identifier)  # the newest last: the oldest are forgotten first
        while len(recent) > RECENT_IDENTIFIERS:
            recent.popitem(last=False)
        # Each identifier is claimed once with the key it came with: a claim answered
        # before (linked, or merged) gives the same answer again.
        new: list[str] = []
        if found.claims:  # an event with one identifier (many) claims nothing: no JSON read
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
        if identifier in self.recent:
            self.recent[identifier] = outcome.owner
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
