"""The canonical forms of the identifiers the contract carries: a lower-cased e-mail
address and an E.164 phone number. Sources normalise what they receive with these and
sinks what they send, so both agree on one form without importing each other; each
translates InvalidIdentifier into its own refusal."""

from __future__ import annotations

import email_validator
import phonenumbers


class InvalidIdentifier(ValueError):
    """A value that is not the identifier ``field`` should hold; the message names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def email(value: str | None, *, field: str = "email") -> str | None:
    """One address, lower-cased, or InvalidIdentifier naming ``field``. The address reaches
    the CRM and an SMTP To: header, so a list (``a@b.c,evil@x.io``), a newline or a NUL is
    refused by email-validator's RFC 5322 syntax check (no DNS look-up: the gateway stays
    fast)."""
    if value is None or not value.strip():
        return None
    try:
        # Spaces around a typed address are harmless; any other whitespace is refused.
        checked = email_validator.validate_email(value.strip(" "), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise InvalidIdentifier(
            field, f"field {field}: {value!r} is not an e-mail address ({exc})"
        ) from None
    return checked.normalized.lower()


def phone(value: str | None, *, region: str = "US", field: str = "phone") -> str | None:
    """E.164 (``+14155550123``). Numbers without a country code are read as ``region``'s."""
    if value is None or not value.strip():
        return None
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(
            field, f"field {field}: {value!r} is not a phone number ({exc})"
        ) from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidIdentifier(field, f"field {field}: {value!r} is not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
