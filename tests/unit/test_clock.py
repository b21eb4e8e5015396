"""The injected clocks that drive timers, and the durations rule files are written in."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.durations import format_duration, parse_duration
from streams.clock import FileClock, ManualClock, SystemClock, clock_from_setting

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def test_a_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(T0)
    assert clock.now() == T0
    assert clock.now() == T0
    clock.advance(timedelta(minutes=5))
    assert clock.now() == T0 + timedelta(minutes=5)
    clock.advance(timedelta(days=30))
    assert clock.now() == T0 + timedelta(days=30, minutes=5)
    clock.set(T0 - timedelta(hours=1))  # set may go back: tests replay any order
    assert clock.now() == T0 - timedelta(hours=1)


def test_the_system_clock_is_aware_utc_and_current() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    assert now.tzinfo is UTC
    assert before <= now <= datetime.now(UTC)


def test_a_file_clock_reads_what_write_put_there(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    FileClock.write(path, T0)
    clock = FileClock(path)
    assert clock.now() == T0
    assert clock.now().tzinfo is UTC
    assert [p.name for p in tmp_path.iterdir()] == ["clock"]  # no temporary file left


def test_a_file_clock_reports_an_offset_time_in_utc(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    tokyo = timezone(timedelta(hours=9))
    FileClock.write(path, datetime(2026, 1, 5, 18, 0, tzinfo=tokyo))
    now = FileClock(path).now()
    assert now == T0
    assert now.tzinfo is UTC


def test_a_file_clock_sees_a_later_write(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    FileClock.write(path, T0)
    clock = FileClock(path)
    assert clock.now() == T0
    first_write = os.stat(path).st_mtime_ns
    FileClock.write(path, T0 + timedelta(days=3))
    # A later write, a second later on any file system (some keep coarse timestamps).
    os.utime(path, ns=(first_write + 10**9, first_write + 10**9))
    assert clock.now() == T0 + timedelta(days=3)
    assert FileClock(path).now() == T0 + timedelta(days=3)  # every reader agrees


def test_a_file_clock_sees_a_write_with_the_same_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    FileClock.write(path, T0)
    clock = FileClock(path)
    assert clock.now() == T0
    first_write = os.stat(path).st_mtime_ns
    FileClock.write(path, T0 + timedelta(days=3))
    os.utime(path, ns=(first_write, first_write))  # both writes in one timestamp tick
    assert clock.now() == T0 + timedelta(days=3)


@pytest.mark.parametrize(
    "text", ["2026-01-05T09:00:00+00:00", "2026-01-05T09:00Z", "  2026-01-05T04:00-05:00\n"]
)
def test_a_file_clock_accepts_iso_instants_with_an_offset(tmp_path: Path, text: str) -> None:
    path = tmp_path / "clock"
    path.write_text(text)
    assert FileClock(path).now() == T0


def test_a_file_clock_refuses_a_time_without_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("2026-01-05T09:00:00")
    with pytest.raises(ValueError) as caught:
        FileClock(path).now()
    assert str(caught.value) == (
        f"{path}: '2026-01-05T09:00:00' has no UTC offset (write e.g. 2026-01-05T09:00Z)"
    )


@pytest.mark.parametrize("text", ["next tuesday", "", "1767603600"])
def test_a_file_clock_refuses_text_that_is_not_an_iso_time(tmp_path: Path, text: str) -> None:
    path = tmp_path / "clock"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        FileClock(path).now()
    assert str(caught.value) == f"{path}: {text!r} is not an ISO-8601 time"


def test_a_missing_clock_file_is_an_error_not_the_system_time(tmp_path: Path) -> None:
    clock = FileClock(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        clock.now()


def test_a_clock_file_that_disappears_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    FileClock.write(path, T0)
    clock = FileClock(path)
    assert clock.now() == T0
    path.unlink()
    with pytest.raises(FileNotFoundError):
        clock.now()


def test_the_clock_setting_names_the_system_clock_or_a_file() -> None:
    assert isinstance(clock_from_setting("system"), SystemClock)
    file_clock = clock_from_setting("file:/x")
    assert isinstance(file_clock, FileClock)
    assert file_clock.path == Path("/x")


@pytest.mark.parametrize("value", ["", "System", "manual", "file", "/tmp/clock"])
def test_an_unknown_clock_setting_is_refused(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        clock_from_setting(value)
    assert str(caught.value) == f"clock {value!r}: use 'system' or 'file:PATH'"


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("0m", timedelta(0)),
        ("1.5h", timedelta(minutes=90)),
        (" 5 m ", timedelta(minutes=5)),
    ],
)
def test_durations_are_a_number_and_a_unit(text: str, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["5", "m", "5min", "-5m", "1 day", "5M", "", "1e3s", "5m30s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == (
        f"{text!r} is not a duration (write a number and a unit: 90s, 5m, 12h, 30d, 2w)"
    )


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(minutes=90), "90m"),
        (timedelta(hours=36), "36h"),
        (timedelta(days=10), "10d"),
        (timedelta(days=7), "1w"),
        (timedelta(days=14), "2w"),
    ],
)
def test_a_duration_is_written_in_its_largest_whole_unit(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text
    assert parse_duration(text) == duration


@given(st.integers(min_value=0, max_value=999_999))
def test_whole_seconds_survive_a_round_trip(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    assert parse_duration(format_duration(duration)) == duration


def test_a_duration_of_over_a_million_seconds_survives_a_round_trip() -> None:
    duration = timedelta(days=12, seconds=1)
    assert parse_duration(format_duration(duration)) == duration
