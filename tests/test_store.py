"""The node store: migrations, single transactions with their audit entries, a verifiable chain."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from linkage.auditlog import verify_chain
from linkage.clock import ManualClock
from node.store import SchemaTooNewError, Store
from node.store.schema import MIGRATIONS


async def _rows(store: Store) -> list[tuple[int, str, bytes]]:
    return [tuple(r) for r in await store.fetchall("SELECT seq, entry, hash FROM audit ORDER BY seq")]


async def test_fresh_store_is_migrated_wal_and_full(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite", ManualClock())
    try:
        assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
        assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await store.fetchone("PRAGMA synchronous"))[0] == 2  # FULL
    finally:
        await store.close()


async def test_store_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNewError, match="newer than this Linkage supports"):
        await Store.open(path, ManualClock())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_failed_transaction_leaves_no_change_and_no_audit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite", ManualClock())
    try:
        async with store.tx() as tx:
            await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
            await tx.audit("case.opened")
        with pytest.raises(sqlite3.IntegrityError):
            async with store.tx() as tx:
                await tx.audit("case.opened")
                await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")  # duplicate key
        async with store.tx() as tx:
            await tx.audit("case.closed")
        rows = await _rows(store)
        assert [r[0] for r in rows] == [1, 2]
        assert verify_chain(rows).ok
    finally:
        await store.close()


async def test_audit_log_refuses_update_and_delete(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite", ManualClock())
    try:
        async with store.tx() as tx:
            await tx.audit("case.opened")
        for sql in ("UPDATE audit SET event = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                async with store.tx() as tx:
                    await tx.execute(sql)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("UPDATE audit SET entry = replace(entry, 'case.opened', 'case.closed') WHERE seq = 2", 2),
        ("DELETE FROM audit WHERE seq = 2", 2),
        ("UPDATE audit SET seq = seq + 100 WHERE seq = 3", 3),
    ],
)
async def test_chain_names_the_first_bad_entry(tmp_path: Path, tamper: str, first_bad: int) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    async with store.tx() as tx:
        for _ in range(4):
            await tx.audit("case.opened", rationale="synthetic")
    await store.close()
    with sqlite3.connect(path) as db:  # an insider with file access drops the guard rails
        db.execute("DROP TRIGGER audit_append_only_update")
        db.execute("DROP TRIGGER audit_append_only_delete")
        db.execute(tamper)
    store = await Store.open(path, ManualClock())
    try:
        result = verify_chain(await _rows(store))
        assert not result.ok
        assert result.first_bad_seq == first_bad
    finally:
        await store.close()
