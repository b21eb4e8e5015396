"""Deterministic ids for what the processors decide."""

from __future__ import annotations

import hashlib


def decision_id(*parts: str) -> str:
    """The same decision from the same inputs has the same id: the sinks' idempotency key,
    and how a replay is recognised."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
