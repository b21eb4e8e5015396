"""Business hours: local wall-clock time decides, across time zones and daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from processors.hours import BusinessHours
from processors.sla import SlaPolicies, load_policies
from streams.rules import RuleFileError, load

NEW_YORK = BusinessHours(timezone="America/New_York")  # 09:00-17:30, Monday to Friday
LONDON = BusinessHours(timezone="Europe/London")
TOKYO = BusinessHours(timezone="Asia/Tokyo")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# New York moves to daylight time on Sunday 2026-03-08: opening is 14:00Z the Friday
# before (EST, UTC-5) and 13:00Z the Monday after (EDT, UTC-4).
@pytest.mark.parametrize(
    ("at", "open_"),
    [
        ("2026-03-06T13:59:59Z", False),  # Friday 08:59:59 EST
        ("2026-03-06T14:00:00Z", True),  # Friday 09:00 EST
        ("2026-03-06T22:29:59Z", True),  # Friday 17:29:59 EST
        ("2026-03-06T22:30:00Z", False),  # Friday 17:30 EST
        ("2026-03-09T12:59:59Z", False),  # Monday 08:59:59 EDT
        ("2026-03-09T13:00:00Z", True),  # Monday 09:00 EDT
        ("2026-03-09T21:29:59Z", True),  # Monday 17:29:59 EDT
        ("2026-03-09T21:30:00Z", False),  # Monday 17:30 EDT
    ],
)
def test_new_york_opens_at_nine_local_on_both_sides_of_the_spring_change(
    at: str, open_: bool
) -> None:
    assert NEW_YORK.contains(utc(at)) is open_


@pytest.mark.parametrize(
    ("at", "open_"),
    [
        ("2026-10-23T08:00:00Z", True),  # Friday 09:00 BST (UTC+1)
        ("2026-10-23T07:59:59Z", False),  # Friday 08:59:59 BST
        ("2026-10-23T16:30:00Z", False),  # Friday 17:30 BST
        ("2026-10-26T08:00:00Z", False),  # Monday 08:00 GMT, after the change on the 25th
        ("2026-10-26T09:00:00Z", True),  # Monday 09:00 GMT
        ("2026-10-26T17:29:59Z", True),  # Monday 17:29:59 GMT
    ],
)
def test_london_opens_an_hour_later_in_utc_after_the_autumn_change(at: str, open_: bool) -> None:
    assert LONDON.contains(utc(at)) is open_


def test_a_zone_east_of_utc_judges_the_local_day_not_the_utc_day() -> None:
    sunday_2330z = utc("2026-11-22T23:30:00Z")  # Monday 08:30 in Tokyo
    assert not TOKYO.contains(sunday_2330z)  # not open yet on Monday
    early = BusinessHours(timezone="Asia/Tokyo", start=time(8, 0))
    assert early.contains(sunday_2330z)  # a Sunday in UTC, a working Monday in Tokyo
    assert TOKYO.contains(utc("2026-11-23T00:00:00Z"))  # Monday 09:00 in Tokyo
    # Friday 15:30 UTC looks like office hours, but it is Saturday 00:30 in Tokyo.
    assert not TOKYO.contains(utc("2026-11-20T15:30:00Z"))


def test_weekends_are_closed_unless_the_days_include_them() -> None:
    saturday_noon = utc("2026-11-28T12:00:00-05:00")
    sunday_noon = utc("2026-11-29T12:00:00-05:00")
    monday_noon = utc("2026-11-30T12:00:00-05:00")
    assert not NEW_YORK.contains(saturday_noon)
    assert not NEW_YORK.contains(sunday_noon)
    assert NEW_YORK.contains(monday_noon)
    weekend = BusinessHours(timezone="America/New_York", days=["sat", "sun"])
    assert weekend.contains(saturday_noon)
    assert weekend.contains(sunday_noon)
    assert not weekend.contains(monday_noon)


def test_the_start_is_inclusive_and_the_end_exclusive_to_the_microsecond() -> None:
    opening = utc("2026-11-23T09:00:00-05:00")
    closing = utc("2026-11-23T17:30:00-05:00")
    tick = timedelta(microseconds=1)
    assert not NEW_YORK.contains(opening - tick)
    assert NEW_YORK.contains(opening)
    assert NEW_YORK.contains(closing - tick)
    assert not NEW_YORK.contains(closing)


def test_an_instant_in_another_offset_is_the_same_instant() -> None:
    # 15:00 in Lisbon (UTC+0 in November) is 10:00 in New York.
    assert NEW_YORK.contains(datetime.fromisoformat("2026-11-23T15:00:00+00:00"))
    assert NEW_YORK.contains(datetime.fromisoformat("2026-11-24T00:00:00+09:00"))


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="an instant needs a time zone"):
        NEW_YORK.contains(datetime(2026, 11, 23, 10, 0))


def test_hours_must_end_after_they_start_and_name_a_real_zone() -> None:
    with pytest.raises(ValidationError, match="end must be after start"):
        BusinessHours(start=time(17, 0), end=time(9, 0))
    with pytest.raises(ValidationError, match="end must be after start"):
        BusinessHours(start=time(9, 0), end=time(9, 0))
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        BusinessHours(timezone="Mars/Olympus")


# The packaged first-touch-hot policy: 5 minutes inside New York business hours, 30
# outside. Monday 2026-03-09 is the first working day of daylight time: opening is 13:00Z.
HOT = load_policies().policy("first-touch-hot")


@pytest.mark.parametrize(
    ("at", "wait"),
    [
        ("2026-03-09T12:59:00Z", timedelta(minutes=30)),  # 08:59 EDT
        ("2026-03-09T13:01:00Z", timedelta(minutes=5)),  # 09:01 EDT
        ("2026-03-06T13:59:00Z", timedelta(minutes=30)),  # Friday before: 08:59 EST
        ("2026-03-06T14:01:00Z", timedelta(minutes=5)),  # Friday before: 09:01 EST
        ("2026-03-09T13:59:00Z", timedelta(minutes=5)),  # Monday 09:59 EDT, not 08:59 EST
    ],
)
def test_first_touch_hot_waits_by_the_local_opening_across_the_dst_change(
    at: str, wait: timedelta
) -> None:
    assert HOT is not None
    hours = load_policies().business_hours
    assert HOT.wait(utc(at), None, hours) == wait


def _policies_with_hours(tmp_path: Path, hours: str) -> Path:
    path = tmp_path / "sla.yaml"
    path.write_text(
        f"business_hours: {hours}\n"
        "policies:\n"
        "  - name: follow\n"
        "    kind: follow_up\n"
        "    description: Follow up.\n"
        "    starts_on: [{event: EMAIL_REPLIED}]\n"
        "    due: {within: 1d}\n"
        "    escalations: [{after: 0m, action: remind_owner}]\n"
    )
    return path


def test_quoted_times_in_a_policy_file_are_wall_clock_times(tmp_path: Path) -> None:
    path = _policies_with_hours(
        tmp_path, '{timezone: Europe/Lisbon, start: "08:00", end: "16:00", days: [sat]}'
    )
    hours = load(path, SlaPolicies).business_hours
    assert (hours.start, hours.end, hours.days) == (time(8, 0), time(16, 0), ["sat"])
    assert hours.contains(utc("2026-11-28T08:00:00Z"))
    assert not hours.contains(utc("2026-11-28T16:00:00Z"))


def test_unquoted_times_in_a_policy_file_are_not_silently_misread(tmp_path: Path) -> None:
    path = _policies_with_hours(tmp_path, "{timezone: America/New_York, start: 9:00, end: 17:30}")
    try:
        hours = load(path, SlaPolicies).business_hours
    except RuleFileError as refused:  # refusing them, naming the field, is fine too
        assert "field business_hours.start" in str(refused)
        return
    assert (hours.start, hours.end) == (time(9, 0), time(17, 30))


def test_a_time_with_an_offset_is_a_rule_file_error(tmp_path: Path) -> None:
    path = _policies_with_hours(tmp_path, '{start: "09:00+01:00", end: "17:30"}')
    with pytest.raises(RuleFileError, match=r":1: field business_hours"):
        load(path, SlaPolicies)
