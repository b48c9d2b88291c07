"""A node's or gateway's SQLite file, opened read-only for information governance: what
the IG commands read, they never change (and a running server keeps writing beside them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from linkage.readonly import connect_read_only, read_only_uri


def read_only_store(path: Path) -> sqlite3.Connection:
    _exists(path)
    db = connect_read_only(path)
    try:
        _readable(db, "main", path)
    except SystemExit:
        db.close()
        raise
    return db


def attach_read_only(db: sqlite3.Connection, path: Path, schema: str) -> None:
    """Open a second store, read-only, in `db` as `schema`: SQLite can then join the two."""
    _exists(path)
    db.execute("ATTACH DATABASE ? AS " + schema, (read_only_uri(path),))
    _readable(db, schema, path)


def _exists(path: Path) -> None:
    if not path.exists():
        raise SystemExit(f"linkage: no store at {path}")


def _readable(db: sqlite3.Connection, schema: str, path: Path) -> None:
    try:
        db.execute(f"SELECT 1 FROM {schema}.sqlite_master LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise SystemExit(f"linkage: {path} is not a store Linkage can read ({exc})") from None
