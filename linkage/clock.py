"""Time as an injected dependency, so tests drive it instead of sleeping."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

DAY_MS = 86_400_000


# Times people read are UTC and say so: a host may keep another zone, and a reader in the
# UK is an hour ahead of UTC all summer.


def utc_minute(ms: int) -> str:
    """A moment as a person reads it in a message: 2026-12-04 05:10 UTC."""
    return f"{utc_cell(ms)[:-3]} UTC"


def utc_second(ms: int) -> str:
    """A moment where an IG officer orders events by it: 2026-12-04 05:10:42 UTC."""
    return f"{utc_cell(ms)} UTC"


def utc_cell(ms: int) -> str:
    """A moment for a spreadsheet cell or a JSON field whose name ends in _utc, in the form
    spreadsheets read as a time: 2026-12-04 05:10:42."""
    return f"{dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC):%Y-%m-%d %H:%M:%S}"


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to.

    It starts at the wall-clock time unless told otherwise, because TLS checks
    certificate validity against the real clock.
    """

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = SystemClock().now_ms() if start_ms is None else start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms
