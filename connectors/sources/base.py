"""What every source connector is: a signature check and a mapping from the provider's
own webhook payload to canonical contact events, with errors that say what was wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import AfterValidator, AwareDatetime, BaseModel, ValidationError

Event = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


def _representable(value: datetime) -> datetime:
    # Events store times in UTC: one that is past year 9999 (or before year 1) there would
    # be written, and then no consumer could read the event back.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range once converted to UTC") from None
    return value


# A provider's time: with a time zone (a naive one is a guess), and representable in UTC.
Time = Annotated[AwareDatetime, AfterValidator(_representable)]


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

    def json(self, *, strict: bool = True) -> Any:
        """The body as JSON, refused (naming the field) unless every string in it can be
        written as UTF-8 and every number is finite: a lone surrogate or a NaN would
        otherwise pass validation and fail later, after other events were published.
        ``strict=False`` skips that check, for a signature check that must still find
        the signature to let the mapping name the bad field."""
        try:
            data = json.loads(self.body, parse_constant=_NotFinite)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, 4300+ digits
            raise MalformedBody(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedBody("body is not valid JSON: nested too deeply") from None
        if strict:
            _check_json(data)
        return data

    def form_fields(self, *, strict: bool = True) -> dict[str, str]:
        """Fields of an ``application/x-www-form-urlencoded`` or ``multipart/form-data``
        body (Mailgun forwards inbound mail as multipart). A field that is not text in
        its charset is refused naming it; with ``strict=False`` (for a signature check,
        which must still find the signature fields) it is read with U+FFFD in its place."""
        content_type = self.headers.get("Content-Type") or self.headers.get("content-type") or ""
        try:
            if content_type.lower().startswith("multipart/form-data"):
                fields = _multipart_fields(content_type, self.body)
            else:
                # surrogateescape keeps undecodable bytes visible to the check below.
                text = self.body.decode("utf-8", "surrogateescape")
                pairs = parse_qsl(text, keep_blank_values=True, errors="surrogateescape")
                fields = {name: (value, None) for name, value in pairs}
        except (LookupError, UnicodeError, ValueError, TypeError) as exc:
            raise MalformedBody(f"body is not valid form data: {exc}") from None
        checked = {}
        for name, (value, problem) in fields.items():
            if not strict:
                checked[_replaced(name)] = _replaced(value)
                continue
            problem = problem or ("" if _is_text(name) and _is_text(value) else "not UTF-8")
            if problem:
                shown = _replaced(name)
                raise MalformedBody(f"field {shown}: not valid text ({problem})", field=shown)
            checked[name] = value
        return checked


# Deeper than any provider's payload; refused before a mapping recurses through it.
MAX_JSON_DEPTH = 64


class _NotFinite(str):
    """What ``NaN``, ``Infinity`` and ``-Infinity`` parse to (JSON has no such numbers)."""


def _check_json(data: Any) -> None:
    """Refuse, naming the field by its path, the first lone surrogate, non-finite number
    or nesting deeper than MAX_JSON_DEPTH (iteratively: the depth is what is checked)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        field = ".".join(path) or "(body)"
        if len(path) > MAX_JSON_DEPTH:
            raise MalformedBody(
                f"field {path[0]}: nested deeper than {MAX_JSON_DEPTH} levels", field=path[0]
            )
        if isinstance(value, _NotFinite):
            raise MalformedBody(f"field {field}: {value} is not a JSON number", field=field)
        if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
            raise MalformedBody(f"field {field}: {value} is not a finite number", field=field)
        if isinstance(value, str) and not _is_text(value):
            raise MalformedBody(f"field {field}: not valid UTF-8 text", field=field)
        if isinstance(value, dict):
            for key in value:
                if not _is_text(key):
                    shown = ".".join((*path, _replaced(key)))
                    raise MalformedBody(f"field {shown}: not valid UTF-8 text", field=shown)
            items = [(v, (*path, k)) for k, v in value.items()]
            stack.extend(reversed(items))  # popped in document order
        elif isinstance(value, list):
            stack.extend(reversed([(v, (*path, str(i))) for i, v in enumerate(value)]))


def _is_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replaced(value: str) -> str:
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[str, str | None]]:
    """Each field's text, and why it is not text where it is not."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise ValueError("multipart body without parts")
    fields: dict[str, tuple[str, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            is_text = part.get_content_maintype() == "text"
            fields[name] = _part_text(part) if is_text else ("", None)
    return fields


def _part_text(part: Any) -> tuple[str, str | None]:
    """A text part in its declared charset (UTF-8 when none is declared, as RFC 7578
    says); a charset Python does not know, or bytes not in it, is the field's problem."""
    raw = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset), None
    except (LookupError, UnicodeError, ValueError, TypeError) as exc:
        return raw.decode("utf-8", "replace"), f"charset {charset!r}: {exc}"


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
    # The payload field an event's event_time comes from, to name it when it is refused.
    time_field: str
    # The one-time value a signature covers instead of the body (Mailgun's token), once
    # the signature held: the gateway refuses it with another body (connectors.sources.replay).
    nonce: Callable[[WebhookRequest], str] | None = None
    # What the provider expects back instead of the gateway's usual answer, computed once
    # the events are on Kafka, with a lookup of a contact by ("phone"|"email", value)
    # (Vapi's tool calls); None keeps the usual answer.
    answer: (
        Callable[
            [WebhookRequest, Callable[[str, str], Awaitable[dict[str, Any] | None]]],
            Awaitable[dict[str, Any] | None],
        ]
        | None
    ) = None


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
