"""How the SQL CRM store cuts a batch of commands into phases, each written with a few
statements (connectors.sinks.crm.sql), with the result of applying the batch command by
command, in its order.

That result depends only on each contact's own order: different contacts' commands write
different rows. So a command joins the earliest phase after its contact's previous one,
or that same phase while the kinds keep the order a phase writes them in (the store's
_RANK). A merge joins two contacts: it comes after everything before it of either, and
before everything after it of either. Merges of distinct contacts share a phase of
merges; commands never share a phase with merges. A command names a contact id that may
have been merged away, before the batch (``survivors``) or by a merge earlier in it: its
contact is the one that id resolves to at that point of the batch.

On the load generator's feed (a merge every ten commands) a batch of 500 then takes about
80 statements instead of 1,500 (tests/bench/bench_store.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Write:
    """A command as the phases see it. ``rank``: where its kind is written in a phase;
    ``retired_id``: set for a merge, the contact it retires into ``contact_id``."""

    command_id: str
    contact_id: str
    rank: int
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
    latest: dict[str, tuple[int, int]] = {}  # contact -> (phase, rank) of its last write
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
            contact = resolve(write.contact_id)
            phase, rank = latest.get(contact, (-1, -1))
            joins = phase >= 0 and not phases[phase].merges and rank < write.rank
            index = first(max(phase if joins else phase + 1, after), merges=False)
            latest[contact] = (index, write.rank)
        else:
            survivor, retired = resolve(write.contact_id), resolve(write.retired_id)
            start = max(latest.get(c, (-1, 0))[0] for c in (survivor, retired)) + 1
            index = first(max(start, after), merges=True)
            latest[survivor] = latest[retired] = (index, 0)
            if retired != survivor:
                merged[retired] = survivor
        placed[write.command_id] = index
        phases[index].members.append(n)
    return phases
