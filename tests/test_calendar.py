"""The federation's days are the UK's: what a node calls today, and so the day a case is
closed on, a review falls due or an answer is late, turns at midnight in London."""

from __future__ import annotations

import datetime as dt

import pytest

from linkage import calendar, clock
from linkage.v1 import summary_pb2 as pb


def _ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


@pytest.mark.parametrize(
    ("at", "day"),
    [
        ("2026-07-04T22:59:59+00:00", (2026, 7, 4)),  # 23:59:59 in London, summer time
        ("2026-07-04T23:00:00+00:00", (2026, 7, 5)),  # midnight in London, still the 4th in UTC
        ("2026-12-04T23:59:59+00:00", (2026, 12, 4)),  # winter: London keeps UTC
        ("2026-12-05T00:00:00+00:00", (2026, 12, 5)),
        ("2026-03-29T00:59:59+00:00", (2026, 3, 29)),  # the night the clocks go forward
        ("2026-10-25T00:30:00+00:00", (2026, 10, 25)),  # and back: 01:30 summer time
        ("2026-10-24T23:30:00+00:00", (2026, 10, 25)),  # 00:30 summer time, the day before they go back
    ],
)
def test_today_is_the_date_in_london(at: str, day: tuple[int, int, int]) -> None:
    assert calendar.today(_ms(at)) == pb.Date(year=day[0], month=day[1], day=day[2])


def test_times_people_read_are_utc_and_say_so() -> None:
    # Half past midnight in London, summer time: still the 4th, 23:30, in UTC.
    at = _ms("2026-07-04T23:30:42+00:00")
    assert (clock.utc_minute(at), clock.utc_second(at)) == ("2026-07-04 23:30 UTC", "2026-07-04 23:30:42 UTC")
    assert clock.utc_cell(at) == "2026-07-04 23:30:42"  # a spreadsheet's time, in a column named *_utc


@pytest.mark.parametrize(
    ("date", "given", "real"),
    [
        (pb.Date(), False, False),
        (pb.Date(year=2026), True, False),
        (pb.Date(month=6), True, False),
        (pb.Date(day=3), True, False),
        (pb.Date(year=2026, month=6, day=31), True, False),
        (pb.Date(year=2024, month=2, day=29), True, True),
    ],
)
def test_a_date_is_given_when_any_part_is_and_real_when_the_calendar_has_it(
    date: pb.Date, given: bool, real: bool
) -> None:
    assert (calendar.given(date), calendar.on_calendar(date)) == (given, real)
