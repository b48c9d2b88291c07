"""CSV that a spreadsheet opens as text, whatever another agency wrote in it.

An IG officer opens the register and the audit export in a spreadsheet. There a cell that
begins with = + - @ or a tab is a formula: `=HYPERLINK(...)` sends the sheet's contents
away at a click, and dynamic data exchange can start a program (CSV injection, CWE-1236).
A received summary's rationale, its decider's name and role, and the reason in a receipt
are whatever the sending agency's software wrote, so such a cell is written with an
apostrophe before it, which the spreadsheet takes as "this is text" and does not show
(OWASP ASVS 1.2.10). Control characters and bidirectional overrides are written as their
escapes, as the command line prints them. The JSON forms keep every text as it was."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from linkage.cli.terminal import harmless

# With their full-width forms, which some spreadsheets' locales read the same way. A
# carriage return or NUL is already an escape by then (`harmless`).
FORMULA_START = ("=", "+", "-", "@", "\t", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def cell(value: Any) -> Any:
    """A value as a spreadsheet should see it: text as text, anything else as it is."""
    if not isinstance(value, str):
        return value
    text = harmless(value)
    return "'" + text if text.startswith(FORMULA_START) else text


class SpreadsheetWriter:
    """A `csv.DictWriter` whose every row goes through `cell`."""

    def __init__(self, out: TextIO, fieldnames: Sequence[str]) -> None:
        self._writer = csv.DictWriter(out, fieldnames=fieldnames)

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: cell(v) for k, v in row.items()})
