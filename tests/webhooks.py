"""Sending provider webhooks to a running gateway, signed the way each provider documents.

The signing here is written independently of connectors/sources/signatures.py, so a
test fails if the gateway's verification drifts from the providers' schemes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from connectors.sources.base import WebhookRequest
from connectors.sources.loadgen import Stories
from connectors.sources.registry import SOURCES

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"

SECRETS = {
    "stripe": "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH",
    "twilio": "12345678901234567890123456789012",
    "vapi": "vapi-server-secret-0b8e",
    "calendly": "calendly-signing-key-3f0a",
    "typeform": "typeform-secret-77c2",
    "forms": "forms-secret-1d2e",
    "jobs": "jobs-secret-9a8b",
    "mailgun": "key-mailgun-signing-4c5d",
    "mailgun-inbound": "key-mailgun-signing-4c5d",
    "hubspot": "hubspot-client-secret-6e7f",
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), json.loads(response.read()))
    except urllib.error.HTTPError as error:
        raw = error.read()
        return Answer(error.code, dict(error.headers), json.loads(raw) if raw else {})


def _hmac(key: str, data: bytes, algo: Any = hashlib.sha256) -> bytes:
    return hmac.new(key.encode(), data, algo).digest()


def signed(
    source: str, body: bytes, url: str, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) for ``source`` as its provider would send them to ``url``."""
    now = time.time() if now is None else now
    secret = SECRETS[source]
    t = int(now)
    json_type = {"Content-Type": "application/json"}
    if source in ("stripe", "calendly", "forms", "jobs"):
        header = {"stripe": "Stripe-Signature", "calendly": "Calendly-Webhook-Signature"}.get(
            source, "X-Switchboard-Signature"
        )
        digest = _hmac(secret, f"{t}.".encode() + body).hex()
        return body, json_type | {header: f"t={t},v1={digest}"}
    if source == "twilio":
        params = dict(parse_qsl(body.decode()))
        data = url + "".join(k + params[k] for k in sorted(params))
        sig = base64.b64encode(_hmac(secret, data.encode(), hashlib.sha1)).decode()
        return body, {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sig,
        }
    if source == "vapi":
        return body, json_type | {"X-Vapi-Secret": secret}
    if source == "typeform":
        sig = "sha256=" + base64.b64encode(_hmac(secret, body)).decode()
        return body, json_type | {"Typeform-Signature": sig}
    if source == "hubspot":
        ts = str(int(now * 1000))
        sig = base64.b64encode(_hmac(secret, b"POST" + url.encode() + body + ts.encode())).decode()
        return body, json_type | {"X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": ts}
    if source in ("mailgun", "mailgun-inbound"):
        token = hashlib.sha256(body).hexdigest()[:50]
        sig = _hmac(secret, f"{t}{token}".encode()).hex()
        text = body.decode()
        if source == "mailgun":
            data = json.loads(text)
            data["signature"] = {"timestamp": str(t), "token": token, "signature": sig}
            return json.dumps(data).encode(), json_type
        fields = dict(parse_qsl(text))
        fields.update(timestamp=str(t), token=token, signature=sig)

        return urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    raise KeyError(source)


def expected_event_ids(seed: int, count: int) -> set[str]:
    stories, ids = Stories(seed), set()
    for _ in range(count):
        webhook = stories.next()
        content_type = "application/x-www-form-urlencoded" if webhook.form else "application/json"
        request = WebhookRequest(webhook.body, {"Content-Type": content_type})
        ids |= {e["event_id"] for e in SOURCES[webhook.source].parse(request, datetime.now(UTC))}
    return ids
