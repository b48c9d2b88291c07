"""A node's or gateway's SQLite file, opened read-only for information governance: what
the IG commands read, they never change (and a running server keeps writing beside them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def read_only_store(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise SystemExit(f"linkage: no store at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise SystemExit(f"linkage: {path} is not a store Linkage can read ({exc})") from None
    return db
