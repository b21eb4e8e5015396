"""The time that drives timers, injected (invariant 7): the system clock in production, a
file that a test or a demo writes in others, so days of SLA time pass in milliseconds
and every process that reads the file agrees on the time."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (unit tests)."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, at: datetime) -> None:
        self._now = at

    def advance(self, by: timedelta) -> None:
        self._now += by


class FileClock:
    """The time written in a file as an ISO-8601 instant with its offset. Re-read when
    the file changes; a missing or unreadable file is an error, not the system time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[tuple[int, int], datetime] | None = None

    def now(self) -> datetime:
        stat = os.stat(self.path)
        # A write replaces the file: a new inode, even within one mtime tick.
        version = (stat.st_ino, stat.st_mtime_ns)
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, parse_instant(self.path.read_text().strip(), str(self.path)))
        return self._seen[1]

    @staticmethod
    def write(path: Path, at: datetime) -> None:
        """Set the time of every FileClock reading ``path`` (atomically)."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(at.isoformat())
        os.replace(temporary, path)


def parse_instant(text: str, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an ISO-8601 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{where}: {text!r} has no UTC offset (write e.g. 2026-01-05T09:00Z)")
    return at.astimezone(UTC)


def clock_from_setting(value: str) -> Clock:
    """``system``, or ``file:PATH``."""
    if value == "system":
        return SystemClock()
    if value.startswith("file:"):
        return FileClock(Path(value.removeprefix("file:")))
    raise ValueError(f"clock {value!r}: use 'system' or 'file:PATH'")
