"""Value conversions every CRM writer needs, from the contract's shapes to the CRMs'."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from connectors.sinks.delivery import Rejected

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
