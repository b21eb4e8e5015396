"""The signature schemes of the providers' webhooks, each checked in constant time.

Every function raises SignatureRejected (401) with what was wrong; none returns a value."""

from __future__ import annotations

import base64
import hashlib
import hmac

from connectors.sources.base import SignatureRejected, StaleTimestamp

# Stripe's default tolerance; Calendly documents three minutes, HubSpot five.
DEFAULT_TOLERANCE_S = 300


def _fresh(timestamp: float, now: float, tolerance: float) -> None:
    if abs(now - timestamp) > tolerance:
        raise StaleTimestamp(
            f"signature timestamp is {abs(now - timestamp):.0f}s from now "
            f"(tolerance {tolerance:.0f}s): replayed or the clocks disagree"
        )


# Plausible Unix times in seconds or milliseconds have at most this many digits; a longer
# one would overflow a float (and is no time anyway).
MAX_TIMESTAMP_DIGITS = 16


def _unix_time(value: str, what: str) -> int:
    """``value`` as an integer Unix time, or SignatureRejected: only ASCII digits, and few
    enough that the arithmetic on it cannot overflow."""
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_TIMESTAMP_DIGITS):
        shown = value if len(value) <= 24 else value[:20] + "..."
        raise SignatureRejected(f"{what} {shown!r} is not a number")
    return int(value)


def _bytes(value: bytes | str) -> bytes:
    # Header values may carry undecodable bytes as lone surrogates (aiohttp decodes them
    # with surrogateescape); surrogatepass keeps them, so they never match, nor raise.
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _matches(expected: bytes | str, candidates: list[str] | list[bytes]) -> bool:
    expected_bytes = _bytes(expected)
    return any(hmac.compare_digest(expected_bytes, _bytes(c)) for c in candidates)


def timestamped_hmac(
    header_value: str, body: bytes, secret: bytes, now: float, tolerance: float
) -> None:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=...]``: Stripe's
    ``Stripe-Signature``, Calendly's ``Calendly-Webhook-Signature`` and Switchboard's own
    ``X-Switchboard-Signature`` for the generic webhooks."""
    parts: dict[str, list[str]] = {}
    for item in header_value.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    if "t" not in parts or "v1" not in parts:
        raise SignatureRejected("signature header lacks t= or v1=")
    timestamp = _unix_time(parts["t"][0], "signature timestamp")
    _fresh(timestamp, now, tolerance)
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not _matches(expected, parts["v1"]):
        raise SignatureRejected("signature does not match the body")


def sign_timestamped(body: bytes, secret: bytes, timestamp: int) -> str:
    """The header value :func:`timestamped_hmac` accepts (for the load generator and tests)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def twilio(url: str, params: dict[str, str], header_value: str, auth_token: bytes) -> None:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 over the full URL Twilio called followed
    by every POST parameter name and value, sorted by name."""
    if not _matches(sign_twilio(url, params, auth_token), [header_value]):
        raise SignatureRejected("X-Twilio-Signature does not match the URL and parameters")


def sign_twilio(url: str, params: dict[str, str], auth_token: bytes) -> str:
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token, _bytes(data), hashlib.sha1).digest()).decode()


def hubspot_v3(
    method: str,
    url: str,
    body: bytes,
    timestamp_ms: str,
    header_value: str,
    secret: bytes,
    now: float,
) -> None:
    """``X-HubSpot-Signature-v3``: base64 HMAC-SHA256 of method + URL + body + the
    ``X-HubSpot-Request-Timestamp`` (ms), which must be under five minutes old."""
    timestamp = _unix_time(timestamp_ms, "X-HubSpot-Request-Timestamp") / 1000
    _fresh(timestamp, now, DEFAULT_TOLERANCE_S)
    if not _matches(sign_hubspot_v3(method, url, body, timestamp_ms, secret), [header_value]):
        raise SignatureRejected("X-HubSpot-Signature-v3 does not match the request")


def sign_hubspot_v3(method: str, url: str, body: bytes, timestamp_ms: str, secret: bytes) -> str:
    data = _bytes(method) + _bytes(url) + body + _bytes(timestamp_ms)
    return base64.b64encode(hmac.new(secret, data, hashlib.sha256).digest()).decode()


def typeform(header_value: str, body: bytes, secret: bytes) -> None:
    """``Typeform-Signature: sha256=<base64 HMAC-SHA256 of the body>``."""
    if not _matches(sign_typeform(body, secret), [header_value]):
        raise SignatureRejected("Typeform-Signature does not match the body")


def sign_typeform(body: bytes, secret: bytes) -> str:
    return "sha256=" + base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


def mailgun(timestamp: str, token: str, signature: str, signing_key: bytes, now: float) -> None:
    """Mailgun's ``signature`` object (or form fields): hex HMAC-SHA256 of timestamp + token."""
    _fresh(_unix_time(timestamp, "signature timestamp"), now, DEFAULT_TOLERANCE_S)
    if not _matches(sign_mailgun(timestamp, token, signing_key), [signature]):
        raise SignatureRejected("Mailgun signature does not match timestamp and token")


def sign_mailgun(timestamp: str, token: str, signing_key: bytes) -> str:
    return hmac.new(signing_key, _bytes(timestamp + token), hashlib.sha256).hexdigest()


def shared_secret(header_value: str, secret: bytes) -> None:
    """A header that carries the secret itself (Vapi's ``X-Vapi-Secret``)."""
    if not _matches(secret, [header_value]):
        raise SignatureRejected("shared-secret header does not match")
