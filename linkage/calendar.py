"""Calendar dates as the contracts carry them (`Date`: year, month, day)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from linkage.v1 import summary_pb2 as pb

# The federation's days are the UK's: a date given or recorded (reviewed by, respond by,
# closed on) is a day in London, an hour ahead of UTC in summer, when a case closed at
# half past midnight was otherwise closed "yesterday". (tzdata, where the system has none.)
UK = ZoneInfo("Europe/London")


def today(now_ms: int) -> pb.Date:
    """The date in the UK at `now_ms`."""
    d = dt.datetime.fromtimestamp(now_ms / 1000, tz=UK).date()
    return pb.Date(year=d.year, month=d.month, day=d.day)


def on_calendar(date: pb.Date) -> bool:
    """A real day: not the 31st of June, nor month 0 or -1, nor a year Python cannot hold."""
    try:
        dt.date(date.year, date.month, date.day)
    except ValueError:
        return False
    return True


def given(date: pb.Date) -> bool:
    """A date was given: some part of it is not zero. A Date all zeros, present or not, was
    left out (case systems that write every field send empty ones)."""
    return bool(date.year or date.month or date.day)
