"""One-time values a provider signs without the body (Mailgun's ``token``): the gateway
remembers each for as long as its timestamp stays fresh, with a digest of the body it
came with and the answer it got. The same request again (a retry that lost our answer)
gets that answer back and changes nothing; the token with another body is a forgery (an
attacker who saw one signed request within the window) and is refused."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answered:
    digest: bytes
    status: int
    body: dict[str, Any]
    at: float


class SeenNonces:
    """Nonces of the last ``window_s`` seconds, at most ``limit`` (the oldest go first:
    past it, a flood of signed requests costs replay protection, never memory). One
    gateway process each: several gateways behind a balancer each remember their own."""

    def __init__(self, window_s: float, limit: int = 200_000) -> None:
        self.window_s = window_s
        self.limit = limit
        self._answered: OrderedDict[str, Answered] = OrderedDict()

    def lookup(self, nonce: str, body: bytes, now: float) -> Answered | None:
        """The answer this nonce got with ``body``; None when it is new. Raises
        ReusedNonce when it came with another body."""
        self._forget_before(now - self.window_s)
        found = self._answered.get(nonce)
        if found is None:
            return None
        if found.digest != _digest(body):
            raise ReusedNonce("the signature's token was already used with another body")
        return found

    def remember(
        self, nonce: str, body: bytes, status: int, answer: dict[str, Any], now: float
    ) -> None:
        self._answered[nonce] = Answered(_digest(body), status, answer, now)
        self._answered.move_to_end(nonce)
        while len(self._answered) > self.limit:
            self._answered.popitem(last=False)

    def _forget_before(self, cutoff: float) -> None:
        while self._answered:
            oldest = next(iter(self._answered.values()))
            if oldest.at >= cutoff:
                return
            self._answered.popitem(last=False)


class ReusedNonce(Exception):
    pass


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()
