"""How the SQL CRM store cuts a batch into phases (connectors.sinks.crm.phases): each
contact's commands stay in their order, merges come between what their contacts had
before and after, and different contacts share phases."""

from __future__ import annotations

from connectors.sinks.crm.phases import Phase, Write, cut

UPSERT, OWNER, TASK = 0, 1, 4  # ranks, as the store's _RANK orders the kinds


def write(n: int, contact: str, rank: int = UPSERT) -> Write:
    return Write(f"cmd-{n}", contact, rank)


def merge(n: int, survivor: str, retired: str) -> Write:
    return Write(f"merge-{n}", survivor, 0, retired_id=retired)


def shape(phases: list[Phase]) -> list[tuple[str, list[int]]]:
    return [("merges" if p.merges else "commands", p.members) for p in phases]


def test_different_contacts_share_one_phase() -> None:
    batch = [write(0, "c-a"), write(1, "c-b", TASK), write(2, "c-c", OWNER)]
    assert shape(cut(batch, {})) == [("commands", [0, 1, 2])]


def test_a_contacts_next_command_of_an_earlier_kind_waits_for_the_next_phase() -> None:
    batch = [write(0, "c-a", TASK), write(1, "c-b"), write(2, "c-a"), write(3, "c-b", TASK)]
    # c-a's upsert would be written before its task in one phase: it goes after.
    assert shape(cut(batch, {})) == [("commands", [0, 1, 3]), ("commands", [2])]


def test_merges_of_distinct_contacts_share_a_phase_between_their_commands() -> None:
    batch = [
        write(0, "c-b"),
        merge(1, "c-a", "c-b"),
        write(2, "c-x"),  # unrelated: the first phase
        merge(3, "c-c", "c-d"),
        write(4, "c-b", TASK),  # c-b is c-a now: after the merge
    ]
    assert shape(cut(batch, {})) == [
        ("commands", [0, 2]),
        ("merges", [1, 3]),
        ("commands", [4]),
    ]


def test_a_merge_of_a_merge_comes_after_it() -> None:
    batch = [merge(0, "c-b", "c-c"), merge(1, "c-a", "c-b"), write(2, "c-c")]
    assert shape(cut(batch, {})) == [
        ("merges", [0]),
        ("merges", [1]),
        ("commands", [2]),
    ]


def test_an_id_merged_away_before_the_batch_follows_its_survivor() -> None:
    batch = [write(0, "c-a", TASK), write(1, "c-old")]
    # c-old is c-a already: its upsert is c-a's second command.
    assert shape(cut(batch, {"c-old": "c-a"})) == [("commands", [0]), ("commands", [1])]


def test_a_redelivered_command_comes_after_its_first_delivery() -> None:
    batch = [write(0, "c-a", TASK), Write("cmd-0", "c-b", TASK)]
    assert shape(cut(batch, {})) == [("commands", [0]), ("commands", [1])]


def test_commands_naming_one_record_keep_their_order_across_contacts() -> None:
    deal = ("deals", "d-1")
    batch = [
        Write("create", "c-a", 2, deal),
        Write("b-moves", "c-b", 3, deal),  # written after the create in one phase: refused
        Write("c-moves", "c-c", 3, ("deals", "d-2")),
        Write("a-creates-again", "c-a", 2, deal),  # after b's move
    ]
    assert shape(cut(batch, {})) == [("commands", [0, 1, 2]), ("commands", [3])]
