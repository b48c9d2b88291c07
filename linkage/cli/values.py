"""Values as the CLI reads and shows them. The argument types turn what a person typed into
a value, or into one line saying what was expected (argparse prints it with the option's
name, exit 2); the rest show a value as people read it."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Callable

from google.protobuf.descriptor import EnumDescriptor

from linkage.tokens import TOKEN_LEN
from linkage.v1 import summary_pb2


def count(most: int) -> Callable[[str], int]:
    """An argument that counts or numbers something: a whole number from 0 to `most`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {most}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argument giving a time to wait: more than 0 seconds, and no more than a day."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86_400:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0, at most 86400")
    return value


def calendar_date(text: str) -> summary_pb2.Date:
    """A day on the calendar, YYYY-MM-DD."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date on the calendar as YYYY-MM-DD") from None
    return summary_pb2.Date(year=day.year, month=day.month, day=day.day)


def link_token(text: str) -> bytes:
    """A link token as entries and `case open` show it: hex digits (either case)."""
    try:
        token = bytes.fromhex(text)
    except ValueError:
        token = b""
    if len(token) != TOKEN_LEN:
        raise argparse.ArgumentTypeError(f"a link token is {TOKEN_LEN * 2} hex digits, as entries show it")
    return token


def iso_day(date: summary_pb2.Date) -> str:
    """A Date as `calendar_date` reads it, or "-" when none was given."""
    return f"{date.year:04d}-{date.month:02d}-{date.day:02d}" if date.year else "-"


def word(enum: EnumDescriptor, value: int) -> str:
    """An enum value as a word: ClosureAnswer's CLOSURE_ANSWER_OBJECT is "object"."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return enum.values_by_number[value].name.removeprefix(prefix).lower()
