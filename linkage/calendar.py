"""Calendar dates as the contracts carry them (`Date`: year, month, day)."""

from __future__ import annotations

import datetime as dt

from linkage.v1 import summary_pb2 as pb


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
