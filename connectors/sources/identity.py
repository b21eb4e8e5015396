"""Identity for the sources: e-mail and phone in the contract's canonical forms
(schemas.identifiers), a bad one refused as Rejected naming its field, and the strongest
identifier an event is keyed by (so all of one person's events from one source share a partition
until identity resolution re-keys them by contact id)."""

from __future__ import annotations

from typing import Any

from connectors.sources.base import Rejected
from schemas import identifiers


def email(value: str | None, *, field: str = "email") -> str | None:
    """One address, lower-cased (schemas.identifiers.email), or Rejected naming ``field``."""
    try:
        return identifiers.email(value, field=field)
    except identifiers.InvalidIdentifier as exc:
        raise Rejected(str(exc), field=exc.field) from None


def phone(value: str | None, *, region: str = "US", field: str = "phone") -> str | None:
    """E.164 (schemas.identifiers.phone), or Rejected naming ``field``."""
    try:
        return identifiers.phone(value, region=region, field=field)
    except identifiers.InvalidIdentifier as exc:
        raise Rejected(str(exc), field=exc.field) from None


def identity(
    *,
    email_address: str | None = None,
    phone_number: str | None = None,
    crm_id: str | None = None,
    external_ids: dict[str, str] | None = None,
    region: str = "US",
) -> dict[str, Any]:
    return {
        "email": email(email_address),
        "phone": phone(phone_number, region=region),
        "crm_id": crm_id,
        "external_ids": {k: v for k, v in (external_ids or {}).items() if v},
    }


def strongest_key(ident: dict[str, Any]) -> bytes:
    """CRM id, then e-mail, then phone, then the first external id (by system name)."""
    if ident.get("crm_id"):
        return f"crm:{ident['crm_id']}".encode()
    if ident.get("email"):
        return f"email:{ident['email']}".encode()
    if ident.get("phone"):
        return f"phone:{ident['phone']}".encode()
    external = ident.get("external_ids") or {}
    if external:
        system = min(external)
        return f"ext:{system}:{external[system]}".encode()
    raise Rejected("the payload identifies nobody: no e-mail, phone, CRM id or external id")
