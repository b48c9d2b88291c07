"""Calendar dates as practitioners record them, against the node's clock."""

from __future__ import annotations

import datetime as dt

from linkage.calendar import today
from linkage.v1 import summary_pb2 as pb

__all__ = ["add_days", "days_between", "iso", "parse", "review_due", "today"]


def iso(date: pb.Date) -> str:
    return f"{date.year:04d}-{date.month:02d}-{date.day:02d}"


def parse(text: str) -> pb.Date:
    d = dt.date.fromisoformat(text)
    return pb.Date(year=d.year, month=d.month, day=d.day)


def days_between(earlier: str, later: str) -> int:
    """Whole days from one ISO date to another."""
    return (dt.date.fromisoformat(later) - dt.date.fromisoformat(earlier)).days


def add_days(date: pb.Date, days: int) -> pb.Date:
    d = dt.date(date.year, date.month, date.day) + dt.timedelta(days=days)
    return pb.Date(year=d.year, month=d.month, day=d.day)


def review_due(summary: pb.RiskSummary) -> str | None:
    """The day a summary of current risk is to be reviewed by (domain.md §6 rule 12: an
    overdue review is flagged to its author and its recipients); None when nothing in it is current."""
    if summary.review_date.year and any(i.currency == pb.CURRENCY_CURRENT for i in summary.risk_items):
        return iso(summary.review_date)
    return None
