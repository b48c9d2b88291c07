"""SQLite files opened read-only, by URI: the only form in which SQLite takes `mode=ro`.

A path goes into the URI escaped: unescaped, SQLite reads a '?' or '#' in it as the
start of the query or fragment, and a '%' as an escape, and opens (or fails to find)
another file than the one named."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def read_only_uri(path: Path) -> str:
    return f"{path.absolute().as_uri()}?mode=ro"


def connect_read_only(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """`autocommit`: no implicit transactions (isolation_level None), as the stores' own readers run."""
    if autocommit:
        return sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    return sqlite3.connect(read_only_uri(path), uri=True)
