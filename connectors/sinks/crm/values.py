"""Value conversions every CRM writer needs, from the contract's shapes to the CRMs'."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

from connectors.delivery import Rejected

# ISO 4217 minor-unit exponents that are not 2 (amount_minor -> major units).
CURRENCY_EXPONENTS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW"), 0),
    **dict.fromkeys(("PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def major_units(amount_minor: int | None, currency: str | None) -> Decimal | None:
    """12345 EUR cents -> 123.45; 500 JPY -> 500."""
    if amount_minor is None:
        return None
    exponent = CURRENCY_EXPONENTS.get((currency or "").upper(), 2)
    return Decimal(amount_minor).scaleb(-exponent)


def utc(value: datetime | int) -> datetime:
    """An Avro timestamp-millis (datetime, or epoch millis) as an aware UTC datetime."""
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC)
    return value.astimezone(UTC)


def task_priority(priority: str, choices: Mapping[str, str], crm: str) -> str:
    """The command's priority (low, normal/medium, high) as the CRM spells it."""
    value = choices.get(priority.lower())
    if value is None:
        raise Rejected(f"{crm}: task priority {priority!r} unknown; use one of {sorted(choices)}")
    return value


_CURRENCY = re.compile(r"[A-Z]{3}")


def iso_currency(value: Any, crm: str) -> str | None:
    """The contract's ISO 4217 code (upper case), or None; anything else is refused."""
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise Rejected(f"{crm}: currency {value!r} is not an ISO 4217 code such as EUR")
    return value


@dataclass(frozen=True)
class Merge:
    """One MERGE_CONTACTS, the ``index``-th record of its batch: ``retired`` becomes part
    of ``survivor``."""

    index: int
    command_id: str
    survivor: str
    retired: str
    identifier: str | None
    issued_at: datetime | int


def merge_of(index: int, record: Mapping[str, Any], crm: str) -> Merge:
    payload: Mapping[str, Any] = record["payload"]
    retired = payload.get("retired_contact_id")
    if not isinstance(retired, str) or not retired:
        raise Rejected(f"{crm}: MERGE_CONTACTS needs the retired_contact_id it merges")
    identifier = payload.get("identifier")
    return Merge(
        index,
        record["command_id"],
        record["contact_id"],
        retired,
        identifier if isinstance(identifier, str) and identifier else None,
        record["issued_at"],
    )


def merge_rounds(merges: list[Merge]) -> Iterator[list[Merge]]:
    """A batch's merges in rounds that share no contact, in order, so a chain c-1 <- c-2
    <- c-3 in one batch resolves step by step."""
    pending = merges
    while pending:
        this_round: list[Merge] = []
        later: list[Merge] = []
        busy: set[str] = set()
        for merge in pending:
            touched = {merge.survivor, merge.retired}
            (later if touched & busy else this_round).append(merge)
            busy |= touched
        yield this_round
        pending = later


MergeAction = Literal["none", "refuse", "rename", "join", "alias"]


def merge_action(
    merge: Merge,
    survivor: str,
    earlier: str | None,
    kept: str | None,
    retired: str | None,
) -> MergeAction:
    """What a merge asks of a CRM, given the survivor it resolves to, the survivor the
    retired id was merged into before (``earlier``), and the CRM's records of the two
    (``kept``, ``retired``, None where it has none):

    - none: one contact already, or the retired one was merged into another before;
    - refuse: the CRM has neither contact;
    - rename: only the retired contact exists, so it becomes the survivor;
    - join: both exist apart, so the CRM merges them (and the alias is kept);
    - alias: the survivor exists and the retired one is gone or the same record."""
    if survivor == merge.retired or (earlier is not None and earlier != survivor):
        return "none"
    if kept is None:
        return "refuse" if retired is None else "rename"
    return "join" if retired is not None and retired != kept else "alias"


def deal_creates(
    records: Sequence[Mapping[str, Any]], indices: Iterable[int]
) -> tuple[dict[int, str], dict[int, int]]:
    """The CREATE_DEALs among a call's ``records`` at ``indices``: the first of each deal
    (index -> deal id), and each later one of the same deal (index -> the first's index,
    whose outcome it shares: one create makes the deal, and two writes of one record in a
    batch call are refused by both CRMs).

    A CREATE_DEAL of a deal that exists changes nothing (the SQL store's docstring says
    why: a merge makes its adopted deals again, so a create from before it can come after
    the survivor moved the deal); a CRM writer asks which of the first ones exist and
    sends only the others."""
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for index in indices:
        record = records[index]
        if record["command_type"] != "CREATE_DEAL":
            continue
        deal_id = str(record["payload"]["deal_id"])
        if deal_id in first:
            repeats[index] = first[deal_id]
        else:
            first[deal_id] = index
    return {index: deal_id for deal_id, index in first.items()}, repeats


class _Indexed(Protocol):
    @property
    def index(self) -> int: ...


_Write = TypeVar("_Write", bound=_Indexed)


async def without_existing_deals(
    records: Sequence[Mapping[str, Any]],
    writes: list[_Write],
    outcomes: Sequence[object],
    existing: Callable[[Mapping[int, str]], Awaitable[set[int]]],
) -> tuple[list[_Write], dict[int, int]]:
    """A writer's ``writes`` but the CREATE_DEALs of deals the CRM has (``existing`` asks
    it, given the first creates as index -> deal id, and answers their indices) and the
    repeats of a create in the call; and those repeats (``deal_creates``), whose outcome
    is their first's. A write whose outcome is already set (a failed look-up) goes too."""
    creates, repeats = deal_creates(records, [w.index for w in writes])
    if not creates:
        return writes, repeats
    found = await existing(creates)
    kept = [
        w
        for w in writes
        if w.index not in repeats and w.index not in found and outcomes[w.index] is None
    ]
    return kept, repeats
