"""The node store: migrations, single transactions with their audit entries, a verifiable chain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.db import GatewayDb
from linkage.auditlog import entry_leaf, verify_chain
from linkage.clock import ManualClock
from linkage.merkle import root_of
from linkage.writability import StoreUnusable
from node.event_numbers import EventNumbers
from node.store import SchemaTooNewError, Store, TransactionLost
from node.store import db as db_module
from node.store.schema import MIGRATIONS
from tests.harness import CapturedLogs, LocalFederation, drop_audit_guards, linkage


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


async def test_a_file_that_is_not_a_store_is_refused_saying_what_to_do(federation: LocalFederation) -> None:
    """A damaged store, or another file in its place, stopped `node serve` and `gateway serve`
    with a traceback; it is now one line saying what it is and what to do."""
    node_config, gateway_config = federation.node_configs["csc"], federation.gateway_config
    for path in (node_config.store_path, gateway_config.store_path):
        path.write_bytes(b"not a store, " * 512)
    said = "is not a store Linkage can read (file is not a database): put back its last backup"
    with pytest.raises(StoreUnusable, match=re.escape(f"{node_config.store_path} {said}")):
        await Store.open(node_config.store_path, ManualClock())
    with pytest.raises(StoreUnusable, match=re.escape(f"{gateway_config.store_path} {said}")):
        await GatewayDb.open(gateway_config.store_path)
    for command, toml, path in (
        ("node", node_config.data_dir / "node.toml", node_config.store_path),
        ("gateway", gateway_config.data_dir / "gateway.toml", gateway_config.store_path),
    ):
        code, _, err = await linkage(command, "serve", "--config", str(toml))
        assert code == 2 and f"linkage: {path} {said}" in err and "Traceback" not in err, err


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
    ("tamper", "first_bad", "problem"),
    [
        (
            "UPDATE audit SET entry = replace(entry, 'case.opened', 'case.closed') WHERE seq = 2",
            2,
            "hash does not match",
        ),
        ("DELETE FROM audit WHERE seq = 2", 2, "entry 2 is missing or out of order"),
        ("UPDATE audit SET seq = seq + 100 WHERE seq = 3", 3, "entry 3 is missing or out of order"),
        # Its text names another position (an entry copied in from elsewhere in the log): caught first.
        ("UPDATE audit SET entry = replace(entry, '\"seq\":2', '\"seq\":3') WHERE seq = 2", 2, "another position"),
    ],
)
async def test_chain_names_the_first_bad_entry(tmp_path: Path, tamper: str, first_bad: int, problem: str) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    async with store.tx() as tx:
        for _ in range(4):
            await tx.audit("case.opened", rationale="synthetic")
    await store.close()
    with sqlite3.connect(path) as db:  # an insider with file access drops the guard rails
        drop_audit_guards(db)
        db.execute(tamper)
    store = await Store.open(path, ManualClock())
    try:
        result = verify_chain(await _rows(store))
        assert not result.ok
        assert result.first_bad_seq == first_bad and problem in result.problem, result
    finally:
        await store.close()


async def _open_case(store: Store, case_id: str, gate: asyncio.Event | None = None) -> None:
    async with store.tx() as tx:
        await tx.execute("INSERT INTO cases VALUES (?, 'ref', 1, 'open')", (case_id,))
        await tx.audit("case.opened")
        if gate is not None:
            await gate.wait()


async def _open_case_lingering(store: Store, case_id: str) -> None:
    async with store.tx(linger_s=3600) as tx:  # far longer than any test runs
        await tx.execute("INSERT INTO cases VALUES (?, 'ref', 1, 'open')", (case_id,))
        await tx.audit("case.opened")


async def _goes_on_from_nothing(store: Store, path: Path) -> None:
    """After transactions that all failed, the next group commits, and its audit entry chains
    from the committed head: the first entry, as nothing of the failed ones stands."""
    await _open_case(store, "c2")
    assert _committed_cases(path) == {"c2"}
    rows = await _rows(store)
    assert [r[0] for r in rows] == [1] and verify_chain(rows).ok


def _committed_cases(path: Path) -> set[str]:
    """What another connection sees: only what is durably committed."""
    with closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT case_id FROM cases")}


async def test_concurrent_transactions_share_a_commit_and_return_only_once_it_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    commits: list[str] = []
    store.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:

        async def open_and_check(n: int) -> None:
            await _open_case(store, f"c{n}")
            assert f"c{n}" in _committed_cases(path)  # returned only after the group's COMMIT

        await asyncio.gather(*(open_and_check(n) for n in range(20)))
        assert len(commits) < 20  # grouped: fewer fsyncs than transactions
        rows = await _rows(store)
        assert [r[0] for r in rows] == list(range(1, 21)) and verify_chain(rows).ok
        assert store.frontier.size == 20
    finally:
        await store.close()


def _stored_head(path: Path) -> int | None:
    """The size of the frontier's stored copy, as a crash would leave it (committed data only)."""
    with closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
    return None if row is None else int(row[0])


async def test_the_frontier_is_stored_every_so_many_entries_and_caught_up_on_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "HEAD_EVERY", 3)
    path, crashed = tmp_path / "s.sqlite", tmp_path / "crashed.sqlite"
    store = await Store.open(path, ManualClock())
    stored = []
    try:
        for _ in range(7):
            async with store.tx() as tx:
                await tx.audit("case.opened", rationale="synthetic")
            stored.append(_stored_head(path))
        assert stored == [None, None, 3, 3, 3, 6, 6]  # not rewritten at every COMMIT
        root = store.frontier.root()
        for suffix in ("", "-wal"):  # the files as a crash now would leave them
            shutil.copy(f"{path}{suffix}", f"{crashed}{suffix}")
    finally:
        await store.close()
    assert _stored_head(path) == 7  # a clean close stores it, so the next opening hashes nothing
    reopened = await Store.open(crashed, ManualClock())
    try:  # the stored copy (6 entries), extended by the entry committed after it
        assert (reopened.frontier.size, reopened.frontier.root()) == (7, root)
    finally:
        await reopened.close()


async def test_a_log_cut_short_behind_the_store_opens_with_the_frontier_of_what_is_left(tmp_path: Path) -> None:
    """Entries deleted from the log's end (by hand, with its guard dropped) leave the stored
    frontier ahead of the log: it is rebuilt from the entries as they stand, so the store
    opens and `audit verify` can say what the witness's checkpoint no longer matches."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    try:
        for _ in range(5):
            async with store.tx() as tx:
                await tx.audit("case.opened", rationale="synthetic")
        leaves = [entry_leaf(entry) for _, entry, _ in await _rows(store)]
    finally:
        await store.close()  # stores the frontier of all 5
    with closing(sqlite3.connect(path)) as db, db:
        drop_audit_guards(db)
        db.execute("DELETE FROM audit WHERE seq > 3")
    reopened = await Store.open(path, ManualClock())
    try:
        assert (reopened.frontier.size, reopened.frontier.root()) == (3, root_of(leaves[:3]))
        with pytest.raises(LookupError, match="the store's audit log ends before entry 5"):
            await reopened.audit_leaves(0, 5)
    finally:
        await reopened.close()


async def test_a_store_that_fails_to_open_leaves_no_reader_thread_behind(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    async with store.tx() as tx:
        await tx.audit("case.opened", rationale="synthetic")
    await store.close()
    with closing(sqlite3.connect(path)) as db, db:  # the frontier's stored copy, damaged on disk
        db.execute("UPDATE audit_head SET frontier = x'0000000000000001'")
    threads = threading.active_count()
    with pytest.raises(ValueError, match="compact range"):
        await Store.open(path, ManualClock())
    assert threading.active_count() == threads  # no reader thread was started for it


async def test_a_failed_transaction_leaves_its_group_intact(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    try:
        await _open_case(store, "c0")
        results = await asyncio.gather(
            *(_open_case(store, "c0" if n == 3 else f"c{n}") for n in range(1, 8)), return_exceptions=True
        )
        assert [type(r).__name__ for r in results].count("IntegrityError") == 1
        assert _committed_cases(path) == {f"c{n}" for n in range(8) if n != 3}
        rows = await _rows(store)
        assert [r[0] for r in rows] == list(range(1, 8)) and verify_chain(rows).ok  # no gap where one failed
    finally:
        await store.close()


async def test_a_failed_member_that_rewrote_many_pages_is_undone_from_the_in_memory_savepoint_journal(
    tmp_path: Path,
) -> None:
    """The writer keeps its savepoint journal in memory (SQLite would spill one over 64 KiB to
    a temp file, a write per page, on the loop). A member that changed far more than that
    and failed must still vanish alone, its group's other members committed."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    try:
        assert store.db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY, the writer only
        assert (await store.fetchone("PRAGMA temp_store"))[0] == 0  # a reader's sort may be large
        async with store.tx() as tx:
            await tx.executemany(
                "INSERT INTO cases VALUES (?, ?, 1, 'open')", [(f"old{n}", "r" * 2000) for n in range(200)]
            )

        async def rewrite_all_then_fail() -> None:
            async with store.tx() as tx:
                await tx.execute("UPDATE cases SET case_ref = ?", ("x" * 2000,))  # ~100 pages, 400 KiB
                await tx.execute("INSERT INTO cases VALUES ('old0', 'dup', 1, 'open')")  # duplicate key

        gate = asyncio.Event()
        first = asyncio.create_task(_open_case(store, "c1", gate))
        await asyncio.sleep(0)  # first holds the writer; the others queue behind it, in one group
        failing = asyncio.create_task(rewrite_all_then_fail())
        last = asyncio.create_task(_open_case(store, "c2"))
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, failing, last, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["NoneType", "IntegrityError", "NoneType"]
        with closing(sqlite3.connect(path)) as db:
            refs = {r[0] for r in db.execute("SELECT case_ref FROM cases WHERE case_id LIKE 'old%'")}
        assert refs == {"r" * 2000} and {"c1", "c2"} <= _committed_cases(path)
    finally:
        await store.close()


async def test_a_waiter_cancelled_in_the_queue_does_not_strand_the_group(tmp_path: Path) -> None:
    """The first transaction ends while a second is queued, so it leaves the COMMIT to the
    group; the second is then cancelled before it starts. The first must still commit."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    try:
        gate = asyncio.Event()
        first = asyncio.create_task(_open_case(store, "c1", gate))
        await asyncio.sleep(0)  # first holds the writer
        second = asyncio.create_task(_open_case(store, "c2"))
        await asyncio.sleep(0)  # second is queued behind it
        gate.set()
        await asyncio.sleep(0)
        second.cancel()
        async with asyncio.timeout(10):
            await first
        assert _committed_cases(path) == {"c1"}
        with pytest.raises(asyncio.CancelledError):
            await second
    finally:
        await store.close()


async def test_a_lingering_transaction_commits_with_the_next_that_may_not_wait(tmp_path: Path) -> None:
    """A transaction allowed to linger waits for company, not for its timer, once a
    transaction that may not wait arrives: both are committed by one COMMIT."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    commits: list[str] = []
    store.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:
        lingering = asyncio.create_task(_open_case_lingering(store, "c1"))
        await asyncio.sleep(0)  # it runs to its end without pausing, then waits for its group's COMMIT
        assert store.db.in_transaction and not lingering.done() and _committed_cases(path) == set()
        async with asyncio.timeout(10):
            await _open_case(store, "c2")
            await lingering
        assert _committed_cases(path) == {"c1", "c2"} and commits == ["COMMIT"]
    finally:
        await store.close()


async def test_a_lingering_transaction_alone_commits_when_its_time_is_up_or_at_close(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    async with store.tx(linger_s=0.001) as tx:
        await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
    assert _committed_cases(path) == {"c1"}  # it returned only once committed
    lingering = asyncio.create_task(_open_case_lingering(store, "c2"))
    await asyncio.sleep(0)
    assert store.db.in_transaction  # done, and waiting for its group's COMMIT
    async with asyncio.timeout(10):
        await store.close()  # closing does not wait out the linger
        await lingering
    assert _committed_cases(path) == {"c1", "c2"}


async def test_a_read_sees_every_commit_that_finished_before_it_even_while_another_read_runs(
    tmp_path: Path,
) -> None:
    """Reads share one connection, and SQLite keeps a connection's read snapshot while any
    of its statements is open. A read queued behind an open one must still see a commit that
    finished before it began: the outbox decides what is due from such reads."""
    store = await Store.open(tmp_path / "s.sqlite", ManualClock())
    try:

        def commit_elsewhere() -> int:  # a commit landing after the first read took its snapshot
            store.db.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
            return 1

        await store.reader.create_function("commit_elsewhere", 0, commit_elsewhere)
        first = asyncio.create_task(store.fetchone("SELECT commit_elsewhere(), COUNT(*) FROM cases"))
        second = asyncio.create_task(store.fetchone("SELECT COUNT(*) FROM cases"))  # queued behind it
        assert (await first)[0] == 1
        assert (await second)[0] == 1
    finally:
        await store.close()


async def test_commit_callbacks_run_after_the_commit_and_never_for_a_rollback(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    seen: list[set[str]] = []
    try:
        async with store.tx() as tx:
            await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
            tx.on_commit(lambda: seen.append(_committed_cases(path)))
            assert not seen
        with pytest.raises(sqlite3.IntegrityError):
            async with store.tx() as tx:
                tx.on_commit(lambda: seen.append({"rolled back"}))
                await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
        assert seen == [{"c1"}]  # it saw the committed row; the failed one never ran
    finally:
        await store.close()


async def test_a_commit_callback_that_raises_undoes_nothing_and_stops_no_other(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("observer failed")

    try:
        async with store.tx() as tx:
            await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
            tx.on_commit(broken)
            tx.on_commit(lambda: seen.append("after"))
        assert _committed_cases(path) == {"c1"} and seen == ["after"]
        (said,) = captured_logs.records("store.on_commit_failed")
        assert said["level"] == "error" and "observer failed" in said["exception"]
        await _open_case(store, "c2")  # and the store goes on
        assert _committed_cases(path) == {"c1", "c2"}
    finally:
        await store.close()


async def test_a_failed_part_vanishes_alone_and_the_rest_of_its_transaction_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    seen: list[str] = []
    try:
        async with store.tx() as tx:
            for case_id in ("c1", "c2", "c1", "c3"):
                with contextlib.suppress(sqlite3.IntegrityError), tx.part():
                    await tx.audit("case.opened", detail={"case": case_id})
                    tx.on_commit(functools.partial(seen.append, case_id))
                    await tx.execute("INSERT INTO cases VALUES (?, 'ref', 1, 'open')", (case_id,))
        assert _committed_cases(path) == {"c1", "c2", "c3"}
        assert seen == ["c1", "c2", "c3"]  # the failed part's callback went with it
        rows = await _rows(store)
        assert [r[0] for r in rows] == [1, 2, 3] and verify_chain(rows).ok  # its entry too, leaving no gap
        assert store.frontier.size == 3
    finally:
        await store.close()


async def test_when_sqlite_rolls_back_the_whole_transaction_no_part_and_no_member_of_its_group_stands(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    store.db.execute(  # what a full disk or an I/O error does to a transaction, in SQLite's own words
        "CREATE TRIGGER lose BEFORE INSERT ON cases WHEN NEW.case_id = 'bad' BEGIN SELECT RAISE(ROLLBACK, 'gone'); END"
    )
    gate = asyncio.Event()

    async def parts() -> None:
        async with store.tx() as tx:
            for case_id in ("c2", "bad", "c3"):
                with contextlib.suppress(sqlite3.IntegrityError), tx.part():  # a part's own failure is absorbed
                    await tx.audit("case.opened")
                    await tx.execute("INSERT INTO cases VALUES (?, 'ref', 1, 'open')", (case_id,))

    try:
        first = asyncio.create_task(_open_case(store, "c1", gate))  # holds the writer until the gate opens
        await asyncio.sleep(0)
        second = asyncio.create_task(parts())  # queued behind it, so it joins the same group
        await asyncio.sleep(0)
        third = asyncio.create_task(_open_case(store, "c4"))  # queued behind both: it starts afresh
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, second, third, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["TransactionLost", "TransactionLost", "NoneType"]
        assert _committed_cases(path) == {"c4"}  # not c1 of the lost group, not c3 after the loss
        await _open_case(store, "c5")
        rows = await _rows(store)
        assert [r[0] for r in rows] == [1, 2] and verify_chain(rows).ok
    finally:
        await store.close()
    reopened = await Store.open(path, ManualClock())  # the committed head agrees with the log
    try:
        assert reopened.frontier.size == 2
    finally:
        await reopened.close()


@pytest.mark.parametrize("inline_below_s", [0.0, 3600.0], ids=["in its thread", "on the loop"])
async def test_a_commit_that_fails_fails_each_member_and_the_next_group_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline_below_s: float
) -> None:
    monkeypatch.setattr(db_module, "INLINE_COMMIT_S", inline_below_s)
    monkeypatch.setattr(db_module, "BUSY_GAP_S", 0.0)  # where it runs depends only on the above
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    # A deferred foreign key is checked by the COMMIT itself: a real COMMIT that fails.
    store.db.executescript(
        "CREATE TABLE parent(id TEXT PRIMARY KEY);"
        "CREATE TABLE child(parent TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);"
    )
    gate = asyncio.Event()

    async def orphan() -> None:
        async with store.tx() as tx:
            await tx.audit("case.opened")
            await tx.execute("INSERT INTO child VALUES ('nobody')")

    try:
        first = asyncio.create_task(_open_case(store, "c1", gate))  # holds the writer until the gate opens
        await asyncio.sleep(0)
        second = asyncio.create_task(orphan())  # queued behind it, so both share the COMMIT
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["IntegrityError", "IntegrityError"]
        assert _committed_cases(path) == set()
        await _goes_on_from_nothing(store, path)
        assert store.frontier.size == 1
    finally:
        await store.close()


class _RollbackFailsOnce:
    """The store's connection, but for one ROLLBACK (or ROLLBACK TO) that fails as a failing
    disk fails it (SQLite's own failure cannot be had on demand)."""

    def __init__(self, db: sqlite3.Connection, rollback: str = "ROLLBACK") -> None:
        self._db, self._rollback = db, rollback
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if sql == self._rollback and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, params)


async def test_a_rollback_that_fails_after_a_failed_commit_is_done_before_the_next_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """A failed COMMIT whose ROLLBACK fails too leaves the connection in its transaction: the
    next transaction rolls it back before it begins, rather than every later write being
    refused (`cannot start a transaction within a transaction`) until the node restarts."""
    monkeypatch.setattr(db_module, "INLINE_COMMIT_S", 0.0)
    monkeypatch.setattr(db_module, "BUSY_GAP_S", 0.0)
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    store.db.executescript(
        "CREATE TABLE parent(id TEXT PRIMARY KEY);"
        "CREATE TABLE child(parent TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);"
    )
    connection = _RollbackFailsOnce(store.db)
    monkeypatch.setattr(store, "db", connection)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with store.tx() as tx:
                await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
                await tx.audit("case.opened")
                await tx.execute("INSERT INTO child VALUES ('nobody')")  # refused by the COMMIT
        assert connection.failed and connection.in_transaction
        said = captured_logs.records()
        assert [(e["event"], e.get("error")) for e in said if e["level"] == "error"] == [
            ("store.commit_failed", "IntegrityError"),
            ("store.rollback_failed", "OperationalError"),
        ]
        await _goes_on_from_nothing(store, path)
    finally:
        await store.close()


async def test_a_transaction_whose_part_cannot_be_undone_fails_its_whole_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that fails is undone to its savepoint, and the others in its group go on
    to their COMMIT. If that undoing fails, what it wrote cannot be parted from what they
    wrote: the whole group is rolled back and each of them fails, so none of its rows is
    committed with theirs."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    connection = _RollbackFailsOnce(store.db, "ROLLBACK TO tx")
    monkeypatch.setattr(store, "db", connection)
    gate = asyncio.Event()

    async def half_written() -> None:
        async with store.tx() as tx:
            await tx.execute("INSERT INTO cases VALUES ('half', 'ref', 1, 'open')")
            await tx.audit("case.opened")
            raise ValueError("the caller's own failure, after it wrote")

    try:
        first = asyncio.create_task(_open_case(store, "c1", gate))  # holds the writer until the gate opens
        await asyncio.sleep(0)
        second = asyncio.create_task(half_written())  # queued behind it, in its group
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert connection.failed
        assert [type(r).__name__ for r in results] == ["TransactionLost", "ValueError"]
        assert _committed_cases(path) == set()
        await _goes_on_from_nothing(store, path)
    finally:
        await store.close()


async def test_a_part_that_cannot_be_undone_loses_its_whole_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part of a transaction fails alone (one message of a batch received, say), but only
    if its writes can be undone: if they cannot, the caller that carries on past the part's
    failure must not commit them with the rest, so the whole transaction is lost."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    connection = _RollbackFailsOnce(store.db, "ROLLBACK TO part")
    monkeypatch.setattr(store, "db", connection)
    try:
        with pytest.raises(TransactionLost):
            async with store.tx() as tx:
                await tx.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")
                try:
                    with tx.part():  # as reception stores each message of a batch
                        await tx.execute("INSERT INTO cases VALUES ('half', 'ref', 1, 'open')")
                        raise ValueError("this part's own failure, after it wrote")
                except TransactionLost:
                    raise
                except Exception:  # this part alone, as reception takes it: the rest goes on
                    pass
                await tx.audit("case.opened")
        assert connection.failed and _committed_cases(path) == set()
        await _goes_on_from_nothing(store, path)
    finally:
        await store.close()


async def test_a_gateway_transaction_whose_rollback_failed_is_rolled_back_before_the_next(
    gateway_db: GatewayDb, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """The gateway's store, as the node's: a transaction that fails and whose ROLLBACK fails
    too leaves the connection in it, and it is rolled back before the connection is used again:
    a read (which shares the connection) sees none of it, and the next transaction begins."""
    await gateway_db.db.execute("CREATE TABLE parent(id TEXT PRIMARY KEY)")
    connection, failed = gateway_db.db, list[str]()
    execute = connection.execute

    def rollback_fails_once(sql: str, parameters: tuple[object, ...] | None = None) -> Any:
        if sql == "ROLLBACK" and not failed:
            failed.append(sql)
            raise sqlite3.OperationalError("disk I/O error")
        return execute(sql, parameters)

    monkeypatch.setattr(connection, "execute", rollback_fails_once)
    with pytest.raises(sqlite3.IntegrityError):
        async with gateway_db.tx() as db:
            await db.execute("INSERT INTO parent VALUES ('p0')")
            await db.execute("INSERT INTO parent VALUES ('p0')")
    assert failed and connection.in_transaction
    said = captured_logs.records()
    assert [(e["event"], e["error"]) for e in said if e["level"] == "error"] == [
        ("store.rollback_failed", "OperationalError")
    ]
    assert await gateway_db.read("SELECT id FROM parent") == []  # committed rows only
    async with gateway_db.tx() as db:
        await db.execute("INSERT INTO parent VALUES ('p1')")
    assert await gateway_db.read("SELECT id FROM parent") == [("p1",)]


@pytest.mark.parametrize(
    ("busy_gap_s", "second_in"), [(3600.0, "store-commit"), (0.0, "MainThread")], ids=["close behind", "alone"]
)
async def test_a_commit_close_behind_the_last_runs_in_the_thread_and_a_lone_one_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_gap_s: float, second_in: str
) -> None:
    monkeypatch.setattr(db_module, "INLINE_COMMIT_S", 3600.0)  # the disk counts as fast throughout
    monkeypatch.setattr(db_module, "BUSY_GAP_S", busy_gap_s)
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    committed_in: list[str] = []  # SQLite calls the trace back in the thread that runs the statement
    store.db.set_trace_callback(
        lambda sql: committed_in.append(threading.current_thread().name) if sql == "COMMIT" else None
    )
    try:
        await _open_case(store, "c1")  # the store's first COMMIT: nothing came before it
        await _open_case(store, "c2")
    finally:
        await store.close()
    assert committed_in[0] == "MainThread"
    assert committed_in[1].startswith(second_in)
    assert _committed_cases(path) == {"c1", "c2"}


@contextmanager
def _migrated_to(version: int, path: Path) -> Iterator[sqlite3.Connection]:
    """A store as a release at schema `version` left it, to put rows in before migrating on."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for number, script in enumerate(MIGRATIONS[:version], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        yield db


async def test_migration_11_moves_each_kept_envelope_to_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _migrated_to(10, path) as db:
        for message_id, envelope, state in (("m1", b"", "delivered"), ("m2", b"sealed", "sent")):
            db.execute(  # as the outbox held them before: m1's body was purged by retention
                "INSERT INTO outbox(message_id, share_id, recipient, envelope, digest, state, next_attempt_at_ms, "
                "created_at_ms) VALUES (?, 's', 'csc', ?, x'00', ?, 1, 1)",
                (message_id, envelope, state),
            )
    store = await Store.open(path, ManualClock())
    try:
        rows = await store.fetchall(
            "SELECT o.seq, o.message_id, o.state, o.body_kept, b.envelope FROM outbox o "
            "LEFT JOIN outbox_bodies b ON b.seq = o.seq ORDER BY o.seq"
        )
        assert [tuple(r) for r in rows] == [(1, "m1", "delivered", 0, None), (2, "m2", "sent", 1, b"sealed")]
    finally:
        await store.close()


async def test_migration_31_lets_a_message_be_cancelled_and_keeps_every_row_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _migrated_to(30, path) as db:
        for message_id, state, follow_up in (("m1", "undeliverable", "Phoned."), ("m2", "queued", None)):
            db.execute(
                "INSERT INTO outbox(message_id, share_id, recipient, digest, state, next_attempt_at_ms, "
                "created_at_ms, kind, summary_id, follow_up) VALUES (?, 's', 'csc', x'00', ?, 1, 1, 1, 'sum', ?)",
                (message_id, state, follow_up),
            )
            db.execute("INSERT INTO outbox_bodies(seq, envelope) VALUES (last_insert_rowid(), ?)", (b"sealed",))
        with pytest.raises(sqlite3.IntegrityError):  # before 31 there was no such state
            db.execute("UPDATE outbox SET state = 'cancelled' WHERE message_id = 'm2'")
    store = await Store.open(path, ManualClock())
    try:
        async with store.tx() as tx:
            await tx.execute("UPDATE outbox SET state = 'cancelled' WHERE message_id = 'm2'")
        rows = await store.fetchall(
            "SELECT o.seq, o.message_id, o.state, o.summary_id, o.follow_up, b.envelope FROM outbox o "
            "JOIN outbox_bodies b ON b.seq = o.seq ORDER BY o.seq"
        )
        assert [tuple(r) for r in rows] == [
            (1, "m1", "undeliverable", "sum", "Phoned.", b"sealed"),
            (2, "m2", "cancelled", "sum", None, b"sealed"),
        ]
        indexes = {r[0] for r in await store.fetchall("SELECT name FROM sqlite_master WHERE tbl_name = 'outbox'")}
        assert {
            "outbox_due",
            "outbox_by_share",
            "outbox_by_summary",
            "outbox_bodies_kept",
            "outbox_to_follow_up",
        } <= indexes
    finally:
        await store.close()


async def test_migration_40_numbers_delivery_events_past_each_restore_already_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _migrated_to(39, path) as db:
        for seq, event, detail in ((1, "node.started", {}), (2, "store.restored", {"log_entries": 1})):
            entry = json.dumps({"seq": seq, "event": event, "detail": detail})
            db.execute(
                "INSERT INTO audit(seq, ts_ms, event, counterpart, entry, hash) VALUES (?, ?, ?, '', ?, x'00')",
                (seq, 1_796_000_000_000 + seq, event, entry),
            )
    store = await Store.open(path, ManualClock())
    try:
        numbers = await EventNumbers.load(store.fetchall)
        assert numbers == EventNumbers((1,), (1_796_000_000_002_000,))
        # The restore's own entry starts its run; a number given before, as its entry, reads on from it.
        assert (numbers.of_entry(1), numbers.of_entry(2)) == (1, 1_796_000_000_002_000)
        assert numbers.entry_after(2) == 1
    finally:
        await store.close()


async def test_migration_12_moves_each_received_message_to_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _migrated_to(11, path) as db:
        for message_id, signed in (("m1", b"first"), ("m2", b"second")):
            db.execute(
                "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id, signed) "
                "VALUES ('amh', ?, x'00', 1, 1, 's', ?)",
                (message_id, signed),
            )
    store = await Store.open(path, ManualClock())
    try:
        rows = await store.fetchall(
            "SELECT i.seq, i.message_id, b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq ORDER BY i.seq"
        )
        assert [tuple(r) for r in rows] == [(1, "m1", b"first"), (2, "m2", b"second")]
        columns = {r[1] for r in await store.fetchall("PRAGMA table_info(inbox)")}
        assert "signed" not in columns and "state" in columns
    finally:
        await store.close()


# For handling conditions (19), items' exemptions (26), then entries stored framed (32).
@pytest.mark.parametrize("before", [18, 25, 31])
async def test_a_migration_derives_the_chronology_again_to_carry_what_entries_now_say(
    tmp_path: Path, before: int
) -> None:
    path = tmp_path / "s.sqlite"
    with _migrated_to(before, path) as db:
        db.execute(
            "INSERT INTO inbox(sender, message_id, digest, received_at_ms, kind, share_id) "
            "VALUES ('amh', 'm1', x'00', 1, 1, 's')"
        )
        db.execute("INSERT INTO chronology VALUES (1, 0, 1, 'amh', 'sum-1', 'new', x'00')")
    store = await Store.open(path, ManualClock())
    try:  # the received message stays; its entries are derived again when next read
        assert (await store.fetchone("SELECT count(*) FROM inbox"))[0] == 1
        assert (await store.fetchone("SELECT count(*) FROM chronology"))[0] == 0
    finally:
        await store.close()


async def test_a_checkpoints_leaves_come_from_what_was_appended_and_match_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leaves a consistency proof needs are kept as entries are appended, so the proof
    reads nothing back; positions a failed member or part held are those of what replaced
    them, and anything from before this store opened is still read from the log."""
    path = tmp_path / "s.sqlite"
    store = await Store.open(path, ManualClock())
    for n in range(3):
        await _open_case(store, f"old{n}")
    await store.close()
    store = await Store.open(path, ManualClock())
    try:
        await _open_case(store, "c1")
        with pytest.raises(sqlite3.IntegrityError):
            async with store.tx() as tx:
                await tx.audit("case.person_added")  # unlike what takes its position next
                await tx.audit("case.person_added")
                await tx.execute("INSERT INTO cases VALUES ('c1', 'dup', 1, 'open')")  # duplicate key
        async with store.tx() as tx:
            await tx.audit("case.opened")
            with contextlib.suppress(ValueError), tx.part():
                await tx.audit("case.person_added")
                raise ValueError("a part that fails alone")
            await tx.audit("case.closed")
        await _open_case(store, "c2")
        logged = [entry_leaf(entry) for _, entry, _ in await _rows(store)]
        assert len(logged) == 3 + 4

        def unread(*_: object) -> None:
            raise AssertionError("read back from the log")

        with monkeypatch.context() as patched:
            patched.setattr(db_module, "_read_only", unread)
            assert await store.audit_leaves(3, 7) == logged[3:]
            assert await store.audit_leaves(4, 6) == logged[4:6]
        assert await store.audit_leaves(1, 7) == logged[1:]  # from before it opened: read
        store.recent_leaves.forget(5)
        assert await store.audit_leaves(3, 7) == logged[3:]  # forgotten: read
    finally:
        await store.close()
