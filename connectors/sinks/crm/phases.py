"""How the SQL CRM store cuts a batch of commands into phases, each written with a few
statements (connectors.sinks.crm.sql), with the result of applying the batch command by
command, in its order.

That result depends only on the order of the commands that share a contact, or a record
(a deal, a task: another contact's command naming it is refused, and how depends on
whether it exists yet); other commands write other rows. So a command joins the earliest
phase after those of its contact and of its record, or the same phase while the kinds
keep the order a phase writes them in (the store's _RANK). A merge joins two contacts:
it comes after everything before it of either, and before everything after it of either.
Merges of distinct contacts share a phase of merges; commands never share a phase with
merges. A command names a contact id that may have been merged away, before the batch
(``survivors``) or by a merge earlier in it: its contact is the one that id resolves to
at that point of the batch.

One difference is left: a command naming a record of another contact is refused either
way, but when a merge in the batch moves that record, the refusal may name its owner
from the other side of the merge (the retired contact, or its survivor).

On the load generator's feed (a merge every ten commands) a batch of 500 then takes about
80 statements instead of 1,500 (tests/bench/bench_store.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Write:
    """A command as the phases see it. ``rank``: where its kind is written in a phase;
    ``record``: the record it names by its own id (``("deals", "d-1")``), if any;
    ``retired_id``: set for a merge, the contact it retires into ``contact_id``."""

    command_id: str
    contact_id: str
    rank: int
    record: tuple[str, str] | None = None
    retired_id: str | None = None


@dataclass
class Phase:
    """Writes (indices into the batch, in its order) applied together: merges or commands."""

    merges: bool
    members: list[int] = field(default_factory=list)


def cut(writes: Sequence[Write], survivors: Mapping[str, str]) -> list[Phase]:
    """``writes`` in phases, to apply one after another. ``survivors``: the contact each id
    merged away before the batch is now."""
    merged: dict[str, str] = {}  # by a merge earlier in the batch: retired -> survivor

    def resolve(contact_id: str) -> str:
        found = survivors.get(contact_id, contact_id)
        while found in merged:
            found = merged[found]
        return found

    phases: list[Phase] = []
    # A contact (("", id)) or a record ((table, id)) -> (phase, rank) of its last write.
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    placed: dict[str, int] = {}  # command id -> phase of its last write (a redelivery)

    def first(start: int, merges: bool) -> int:
        for index in range(start, len(phases)):
            if phases[index].merges == merges:
                return index
        phases.append(Phase(merges))
        return len(phases) - 1

    for n, write in enumerate(writes):
        after = placed.get(write.command_id, -1) + 1
        if write.retired_id is None:
            keys = [("", resolve(write.contact_id))]
            if write.record is not None:
                keys.append(write.record)
            start = after
            for key in keys:
                phase, rank = latest.get(key, (-1, -1))
                joins = phase >= 0 and not phases[phase].merges and rank < write.rank
                start = max(start, phase if joins else phase + 1)
            index = first(start, merges=False)
            for key in keys:
                latest[key] = (index, write.rank)
        else:
            survivor, retired = resolve(write.contact_id), resolve(write.retired_id)
            both = [("", survivor), ("", retired)]
            start = max(latest.get(key, (-1, 0))[0] for key in both) + 1
            index = first(max(start, after), merges=True)
            for key in both:
                latest[key] = (index, 0)
            if retired != survivor:
                merged[retired] = survivor
        placed[write.command_id] = index
        phases[index].members.append(n)
    return phases
