"""The outbox: notifications for channels this deployment has no settings for, written to
a JSON-lines file (one rendered notification per line) instead of being dead-lettered.
`make run` uses it, so the demo shows what reps would be told without a mail server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors.delivery import Outcome, Rejected
from connectors.sinks.notify.templates import render_webhook


class OutboxChannel:
    name = "outbox"
    max_batch = 500
    in_order = False

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        lines: list[bytes] = []
        outcomes: list[Outcome] = []
        for record in records:
            try:
                lines.append(render_webhook(record) + b"\n")
                outcomes.append(None)
            except Rejected as exc:
                outcomes.append(exc)
        await asyncio.to_thread(self._append, b"".join(lines))
        return outcomes

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # confirmed means on disk: the offset commits next

    async def close(self) -> None:
        return None
