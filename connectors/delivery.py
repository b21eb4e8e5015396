"""The contract between the delivery runtime and the destinations it delivers to, and the
outcome of a call out (Retryable, Rejected), which the enrichment source shares.

A destination takes decoded records (CRM commands or notifications, as the Avro contract
decodes them) in batches of at most ``max_batch`` and answers, for each record in order,
``None`` when the destination confirmed it, or the DeliveryError that says why not. A
failure of the whole call (429, 5xx, timeout, refused connection) is raised instead. The
runtime (connectors.sinks.runtime) owns everything else: retries, backoff, Retry-After,
rate limits, concurrency, the circuit breaker, dead letters and offsets.

Every record carries its idempotency key (``command_id``, ``notification_id``): a
destination must make a second delivery of the same key change nothing (an upsert by that
key, a ledger, or the key sent along for the receiver to deduplicate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class DeliveryError(Exception):
    """A record (or a whole call) was not delivered. ``answer`` is what the destination
    said, verbatim enough to act on (status and body excerpt); it goes to the dead letter."""

    def __init__(self, reason: str, answer: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer

    def __str__(self) -> str:
        return f"{self.reason}: {self.answer}" if self.answer else self.reason


class Retryable(DeliveryError):
    """Worth trying again: rate limited, overloaded, timed out, unreachable, a 5xx.
    ``retry_after`` is the destination's own wait in seconds (Retry-After), if it gave one."""

    def __init__(self, reason: str, answer: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, answer)
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """The destination refused the record for good (validation, unknown owner, bad
    credentials): retrying cannot help, so it goes to the dead-letter topic."""


Outcome = DeliveryError | None


class Destination(Protocol):
    """Where a sink delivers: a CRM writer or a notification channel."""

    name: str
    max_batch: int
    # True: a call may hold several records of a contact, and they take effect in their
    # order (a retry is of a whole call), so the runtime sends a batch whole. False: at
    # most one record per contact in a call, each contact's next in a call after it.
    in_order: bool

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Deliver ``records`` (at most ``max_batch``; at most one per contact unless
        ``in_order``); one outcome per record, in order. Raise Retryable or Rejected when
        the whole call failed."""
        ...

    async def close(self) -> None: ...
