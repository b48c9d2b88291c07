"""The mark `linkage backup restore` leaves beside a node's store it puts in place, for the
node's next start to act on (node/redelivery.py): which restore, which store file, and
from when the store lacks what arrived.

It is written, whole, before the store is swapped in, and names the restored file by its
inode (a rename keeps it): a restore cut short before the swap leaves a mark that names a
file which is not the store, and the node drops it."""

from __future__ import annotations

import json
import os
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from linkage.files import fsync_dir, write_private
from linkage.ids import uuid7
from linkage.readonly import connect_read_only

FORMAT = "linkage-restored/1"


@dataclass(frozen=True)
class Restored:
    restore_id: str
    inode: int  # the restored store file's
    log_entries: int
    last_entry_ms: int  # the restored log's last entry: nothing that came after it is in the store
    backup_taken_at_ms: int
    restored_at_ms: int

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Restored:
        fields = json.loads(data)
        if fields.pop("format", None) != FORMAT:
            raise ValueError(f"not a {FORMAT} mark")
        return cls(**fields)


def mark_path(store: Path) -> Path:
    return store.with_name(store.name + ".restored")


def mark(staged: Path, store: Path, backup_taken_at_ms: int, now_ms: int) -> Restored:
    """Write the mark for `staged`, a node's store about to be put in place as `store`."""
    with closing(connect_read_only(staged)) as db:
        last = db.execute("SELECT seq, ts_ms FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    entries, last_ms = last if last is not None else (0, backup_taken_at_ms)
    restored = Restored(
        restore_id=uuid7(now_ms),
        inode=staged.stat().st_ino,
        log_entries=int(entries),
        last_entry_ms=int(last_ms),
        backup_taken_at_ms=backup_taken_at_ms,
        restored_at_ms=now_ms,
    )
    write_private(mark_path(store), restored.to_json())
    return restored


def read_mark(store: Path) -> Restored | None:
    """The mark beside `store`, if there is one; ValueError for one that cannot be read."""
    try:
        data = mark_path(store).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Restored.from_json(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{mark_path(store)} is not a restore's mark ({exc})") from None


def in_place(store: Path, restored: Restored) -> bool:
    """Whether `store` is the file the restore put in place."""
    return os.stat(store).st_ino == restored.inode


def clear_mark(store: Path) -> None:
    mark_path(store).unlink(missing_ok=True)
    fsync_dir(store.parent)
