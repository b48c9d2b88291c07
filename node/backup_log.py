"""The node enters each backup `linkage backup create` took of it in its audit log
(linkage/store_notes.py): when, which file (by its SHA-256), to which keys, and what
its store held. A record is removed once its entry is committed; one already entered (the
node stopped between the two) is not entered twice."""

from __future__ import annotations

from dataclasses import asdict

from linkage.store_notes import BackupRecord, enter_waiting
from node.store import Store


async def enter_backups(store: Store) -> int:
    """Enter the backups waiting to be; how many were."""

    async def entered(record: BackupRecord) -> bool:
        row = await store.fetchone(
            "SELECT 1 FROM audit WHERE ts_ms >= ? AND event = 'store.backed_up' "
            "AND json_extract(entry, '$.detail.backup_id') = ?",
            (record.taken_at_ms, record.backup_id),
        )
        return row is not None

    async def enter(record: BackupRecord) -> None:
        async with store.tx() as tx:
            await tx.audit("store.backed_up", detail=asdict(record))

    return await enter_waiting(store.path, entered, enter)
