"""The node enters each backup `linkage backup create` took of it in its audit log
(linkage/store_notes.py): when, which file (by its SHA-256), to which keys, and what
its store held. A record is removed once its entry is committed; one already entered (the
node stopped between the two) is not entered twice."""

from __future__ import annotations

from dataclasses import asdict

from linkage import logs
from linkage.files import fsync_dir
from linkage.store_notes import BackupRecord, waiting
from node.store import Store

log = logs.get("node.backup_log")


async def enter_backups(store: Store) -> int:
    """Enter the backups waiting to be; how many were."""
    entered = 0
    for path in waiting(store.path):
        try:
            record = BackupRecord.from_json(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:  # left for a person to look at, said each time
            log.error("backup.record_unreadable", file=path.name, problem=str(exc))
            continue
        if not await _entered(store, record):
            async with store.tx() as tx:
                await tx.audit("store.backed_up", detail=asdict(record))
            entered += 1
            log.info("store.backed_up", backup_id=record.backup_id, log_entries=record.log_entries)
        path.unlink()
        fsync_dir(path.parent)
    return entered


async def _entered(store: Store, record: BackupRecord) -> bool:
    row = await store.fetchone(
        "SELECT 1 FROM audit WHERE ts_ms >= ? AND event = 'store.backed_up' "
        "AND json_extract(entry, '$.detail.backup_id') = ?",
        (record.taken_at_ms, record.backup_id),
    )
    return row is not None
