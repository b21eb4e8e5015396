"""Identity normalisation: lower-cased e-mail, E.164 phone, and the strongest identifier
an event is keyed by (so all of one person's events from one source share a partition
until identity resolution re-keys them by contact id)."""

from __future__ import annotations

from typing import Any

import email_validator
import phonenumbers

from connectors.sources.base import Rejected


def email(value: str | None, *, field: str = "email") -> str | None:
    """One address, lower-cased, or Rejected naming ``field``. The address reaches the CRM
    and an SMTP To: header, so a list (``a@b.c,evil@x.io``), a newline or a NUL is refused
    by email-validator's RFC 5322 syntax check (no DNS look-up: the gateway stays fast)."""
    if value is None or not value.strip():
        return None
    try:
        # Spaces around a typed address are harmless; any other whitespace is refused.
        checked = email_validator.validate_email(value.strip(" "), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise Rejected(
            f"field {field}: {value!r} is not an e-mail address ({exc})", field=field
        ) from None
    return checked.normalized.lower()


def phone(value: str | None, *, region: str = "US", field: str = "phone") -> str | None:
    """E.164 (``+14155550123``). Numbers without a country code are read as ``region``'s."""
    if value is None or not value.strip():
        return None
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise Rejected(
            f"field {field}: {value!r} is not a phone number ({exc})", field=field
        ) from None
    if not phonenumbers.is_possible_number(parsed):
        raise Rejected(f"field {field}: {value!r} is not a possible phone number", field=field)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


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
