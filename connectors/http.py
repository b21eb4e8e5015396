"""HTTP for the connectors that call out (the HubSpot, Salesforce, Slack, Twilio and webhook
sinks, the enrichment source): one request helper that turns every way a call can fail
into Retryable or Rejected."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict

from connectors.delivery import Rejected, Retryable

ANSWER_EXCERPT = 2000  # characters of a response body kept for the dead letter
# The most of an answer a sink reads: far above any batch answer a CRM gives (HubSpot's
# and Salesforce's for 200 records are tens of KiB), and a bound on what a broken or
# hostile destination can make a sink hold.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def summary(self) -> str:
        return f"HTTP {self.status} {self.text[:ANSWER_EXCERPT]}".strip()


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP-date (RFC 9110 10.2.3);
    None for anything else (``inf`` and ``nan`` included). How long a sink really waits is
    capped by its Backoff."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    **kwargs: Any,
) -> Answer:
    """One HTTP call. Transport failures (timeout, refused, reset) raise Retryable; the
    answer is returned whatever its status: see ``raise_for_status``."""
    try:
        async with session.request(
            method, url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs
        ) as response:
            body = await response.content.read(MAX_ANSWER_BYTES + 1)
            while len(body) <= MAX_ANSWER_BYTES and not response.content.at_eof():
                body += await response.content.read(MAX_ANSWER_BYTES + 1 - len(body))
            if len(body) > MAX_ANSWER_BYTES:
                raise Retryable(
                    f"{what}: HTTP {response.status} with an answer of more than "
                    f"{MAX_ANSWER_BYTES} bytes, not read further"
                )
            text = body.decode(_charset(response.charset), errors="replace")
            return Answer(response.status, CIMultiDict(response.headers), text)
    except TimeoutError as exc:
        raise Retryable(f"{what}: no answer within {timeout_s:g} s") from exc
    except asyncio.CancelledError:
        raise
    except aiohttp.ClientError as exc:
        raise Retryable(f"{what}: {type(exc).__name__}", str(exc)) from exc


def _charset(declared: str | None) -> str:
    """The answer's charset when it names a real one, else UTF-8."""
    if declared:
        with contextlib.suppress(LookupError):
            return codecs.lookup(declared).name
    return "utf-8"


def raise_for_status(answer: Answer, what: str) -> None:
    """2xx passes. 429, 503 and other 5xx and 408 are Retryable (with the destination's
    Retry-After); any other status is Rejected with the destination's answer."""
    status = answer.status
    if 200 <= status < 300:
        return
    if status in (408, 429) or status >= 500:
        wait = retry_after_seconds(answer.headers.get("Retry-After"))
        raise Retryable(f"{what}: HTTP {status}", answer.summary(), retry_after=wait)
    raise Rejected(f"{what}: HTTP {status}", answer.summary())
