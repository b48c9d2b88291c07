"""What `linkage backup` leaves beside a store for its node or gateway to act on, since the
running server holds the only writer of its log: a record of each backup taken, and the
mark of a node's restore. Each is a JSON file written whole, named for the store (so never
bundled into a backup), and removed once the server has committed what it does with it.

A backup record: a node's backup is a copy of everything it holds about people, the
gateway's of who subscribes to which token and what passed between whom, and whoever
answers for each answers for every copy. So the node enters each in its audit log
(node/backup_log.py), and the gateway in its metadata log (gateway/server.py), at the next
start, every few minutes and on SIGHUP. X-Road's security server audits its backups the
same way.

A restore's mark (node/redelivery.py): which restore, which store file, and from when the
store lacks what arrived: after its log's last entry, and, of what the node made, after the
newest id the store holds. It is written before the store is swapped in, and names the
restored file by its inode (a rename keeps it): a restore cut short before the swap leaves
a mark that names a file which is not the store, and the node drops it."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from linkage import logs
from linkage.files import fsync_dir, write_private
from linkage.ids import uuid7
from linkage.readonly import connect_read_only

log = logs.get("store_notes")
# The tables of a node's store that keep ids the node made, and their id columns.
MADE_IDS = (
    ("outbox", "message_id"),
    ("cases", "case_id"),
    ("assessments", "assessment_id"),
    ("shares", "share_id"),
    ("closures", "closure_id"),
    ("info_requests", "request_id"),
)


def newest_id_query(tables: Iterable[str]) -> str:
    """The query for the newest id a node made, in those of `tables` that keep one: ids it
    makes from then on come after it, however its clock is set (linkage/ids.py). Each is
    read by its index. (A store of an older schema may lack some of the tables.)"""
    present = set(tables)
    parts = [f"SELECT MAX({column}) AS id FROM {table}" for table, column in MADE_IDS if table in present]
    return f"SELECT MAX(id) FROM ({' UNION ALL '.join(parts)})" if parts else "SELECT NULL"


NEWEST_ID = newest_id_query(table for table, _ in MADE_IDS)


class _Note:
    FORMAT: ClassVar[str]

    def to_json(self) -> bytes:
        fields = asdict(self)  # type: ignore[call-overload]  # every note is a dataclass
        return json.dumps({"format": self.FORMAT, **fields}, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        fields: dict[str, Any] = json.loads(data)
        if fields.pop("format", None) != cls.FORMAT:
            raise ValueError(f"not a {cls.FORMAT} file")
        return cls(**fields)


# -- backups taken -----------------------------------------------------------------------


@dataclass(frozen=True)
class BackupRecord(_Note):
    FORMAT = "linkage-backup-record/1"

    backup_id: str
    taken_at_ms: int
    file: str  # its name, where it was written: it may be moved, its digest names it wherever it goes
    sha256: str  # of the encrypted file: `sha256sum` of a backup finds its record
    size: int  # bytes
    recipients: list[str]  # the age public keys that open it
    store_sha256: str
    log_entries: int
    log_root: str


def records_folder(store: Path) -> Path:
    return store.with_name(store.name + ".backups")


def leave(store: Path, record: BackupRecord) -> None:
    folder = records_folder(store)
    folder.mkdir(mode=0o700, exist_ok=True)
    write_private(folder / f"{record.backup_id}.json", record.to_json())


def waiting(store: Path) -> Iterator[Path]:
    """The records not yet entered in the log, oldest first (their ids ascend in time)."""
    folder = records_folder(store)
    if folder.is_dir():
        yield from sorted(folder.glob("*.json"))


async def enter_waiting(
    store: Path,
    entered: Callable[[BackupRecord], Awaitable[bool]],
    enter: Callable[[BackupRecord], Awaitable[None]],
) -> int:
    """Enter each record waiting beside `store` in its member's log, committed by `enter`,
    then remove it; one `entered` finds there already (its member stopped between the two)
    is only removed. How many were entered."""
    count = 0
    for path in waiting(store):
        try:
            record = BackupRecord.from_json(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:  # left for a person to look at, said each time
            log.error("backup.record_unreadable", file=path.name, problem=str(exc))
            continue
        if not await entered(record):
            await enter(record)
            count += 1
            log.info("store.backed_up", backup_id=record.backup_id, log_entries=record.log_entries)
        path.unlink()
        fsync_dir(path.parent)
    return count


# -- a restore -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored(_Note):
    FORMAT = "linkage-restored/1"

    restore_id: str
    inode: int  # the restored store file's
    log_entries: int
    last_entry_ms: int  # the restored log's last entry: nothing that came after it is in the store
    backup_taken_at_ms: int
    backup_sha256: str  # of the backup file, as the record of its taking names it
    restored_at_ms: int
    newest_id: str = ""  # the newest id the restored store holds of its node's making (none in an older mark)


def mark_path(store: Path) -> Path:
    return store.with_name(store.name + ".restored")


def mark(staged: Path, store: Path, backup_taken_at_ms: int, backup_sha256: str, now_ms: int) -> Restored:
    """Write the mark for `staged`, a node's store about to be put in place as `store`."""
    with closing(connect_read_only(staged)) as db:
        last = db.execute("SELECT seq, ts_ms FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        tables = (name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        (newest,) = db.execute(newest_id_query(tables)).fetchone()
    entries, last_ms = last if last is not None else (0, backup_taken_at_ms)
    restored = Restored(
        restore_id=uuid7(now_ms),
        inode=staged.stat().st_ino,
        log_entries=int(entries),
        last_entry_ms=int(last_ms),
        backup_taken_at_ms=backup_taken_at_ms,
        backup_sha256=backup_sha256,
        restored_at_ms=now_ms,
        newest_id=str(newest or ""),
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
