"""What every source connector is: a signature check and a mapping from the provider's
own webhook payload to canonical contact events, with errors that say what was wrong."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.parser import BytesParser
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

Event = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


class Rejected(Exception):
    """A request the gateway answers with an error status instead of accepting it."""

    status = 400
    reason = "invalid_payload"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SignatureRejected(Rejected):
    """Wrong, missing or stale signature: answered 401, recorded nowhere but metrics."""

    status = 401
    reason = "bad_signature"


class StaleTimestamp(SignatureRejected):
    reason = "stale_timestamp"


class MalformedBody(Rejected):
    reason = "malformed_body"


@dataclass(frozen=True)
class WebhookRequest:
    """What a signature check and a mapping may look at. ``url`` is the URL the provider
    called (behind a proxy, the public one), which some schemes sign."""

    body: bytes
    headers: Mapping[str, str]
    url: str = "http://127.0.0.1/"
    method: str = "POST"
    form: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            # Header names are case-insensitive; a plain dict (import, tests) may vary.
            lowered = {k.lower(): v for k, v in self.headers.items()}
            value = lowered.get(name.lower())
        if not value:
            raise SignatureRejected(f"missing {name} header", field=name)
        return value

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedBody(f"body is not valid JSON: {exc}") from None

    def form_fields(self) -> dict[str, str]:
        """Fields of an ``application/x-www-form-urlencoded`` or ``multipart/form-data``
        body (Mailgun forwards inbound mail as multipart)."""
        content_type = self.headers.get("Content-Type") or self.headers.get("content-type") or ""
        try:
            if content_type.lower().startswith("multipart/form-data"):
                return _multipart_fields(content_type, self.body)
            return dict(parse_qsl(self.body.decode(), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedBody(f"body is not valid form data: {exc}") from None


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise ValueError("multipart body without parts")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            fields[name] = part.get_content() if part.get_content_maintype() == "text" else ""
    return fields


@dataclass(frozen=True)
class Source:
    """One external system: how its webhooks are signed and how they map to events.

    ``verify(request, secret, now)`` raises SignatureRejected; ``parse(request, received)``
    returns canonical events or raises Rejected naming the field."""

    name: str
    system: str
    description: str
    verify: Callable[[WebhookRequest, bytes, float], None]
    parse: Callable[[WebhookRequest, datetime], list[Event]]


def validated(model: type[M], data: Any) -> M:
    """``model`` validated from ``data``; the error names the first bad field by its path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"]) or "(body)"
        raise Rejected(
            f"field {path}: {first['msg'].lower()}"
            + ("" if len(exc.errors()) == 1 else f" (and {len(exc.errors()) - 1} more)"),
            field=path,
        ) from None
