"""`audit verify` in ranges (`verify_store`): for any log, tampered or not, and any
checkpoints, the report is exactly the one pass's (`verify_log`), in this process and
in worker processes."""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage.auditlog import GENESIS, AuditEntry, LogReport, chain_hash, entry_leaf, verify_log, verify_store
from linkage.auditrange import check_range
from linkage.merkle import CompactRange, root_of
from linkage.v1 import audit_pb2

Row = tuple[int, str, bytes]
TAMPERS = ("none", "edit", "rechain", "delete", "swap", "gap", "seq0", "truncate")


def audit_rows(size: int) -> list[Row]:
    rows, prev = [], GENESIS
    for seq in range(1, size + 1):
        actor = {"id": "p-1", "role": "Social worker"}
        entry = AuditEntry(seq, 1_767_225_600_000 + seq, "share.decision", actor, message_id=f"m-{seq}")
        prev = chain_hash(prev, entry.canonical())
        rows.append((seq, entry.canonical(), prev))
    return rows


def _rechained(rows: list[Row], start: int) -> list[Row]:
    prev = rows[start - 1][2] if start else GENESIS
    out = rows[:start]
    for seq, entry, _ in rows[start:]:
        prev = chain_hash(prev, entry)
        out.append((seq, entry, prev))
    return out


def tampered(rows: list[Row], tamper: str, at: int) -> list[Row]:
    """`rows` changed as someone with the file might change them, at row `at`."""
    if not rows or tamper == "none":
        return rows
    at %= len(rows)
    seq, entry, stored = rows[at]
    edited = entry.replace("share.decision", "share.withheld")
    if tamper == "edit":
        return [*rows[:at], (seq, edited, stored), *rows[at + 1 :]]
    if tamper == "rechain":  # hashes and all: only a checkpoint can tell
        return _rechained([*rows[:at], (seq, edited, stored), *rows[at + 1 :]], at)
    if tamper == "delete":
        return rows[:at] + rows[at + 1 :]
    if tamper == "swap" and at + 1 < len(rows):
        nxt = rows[at + 1]
        return [*rows[:at], (seq, nxt[1], nxt[2]), (nxt[0], entry, stored), *rows[at + 2 :]]
    if tamper == "gap":
        return rows[:at] + [(s + 1, e, h) for s, e, h in rows[at:]]
    if tamper == "seq0":
        return [(0, edited, stored), *rows]
    return rows[:at]  # truncate


def _store(path: Path, rows: list[Row]) -> Path:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE audit(seq INTEGER PRIMARY KEY, entry TEXT, hash BLOB)")
        db.executemany("INSERT INTO audit VALUES (?, ?, ?)", rows)
    return path


def checkpoints_at(rows: list[Row], sizes: list[tuple[int, bool]]) -> list[audit_pb2.Checkpoint]:
    """At each size, the true root of the untampered log's first entries, or a wrong one."""
    leaves = [entry_leaf(entry) for _, entry, _ in rows]
    return [
        audit_pb2.Checkpoint(
            tree_size=size,
            root=root_of(leaves[:size]) if true and size <= len(leaves) else sha256(b"not %d" % size).digest(),
            at_ms=1_767_225_600_000 + size,
        )
        for size, true in sizes
    ]


def _one_pass(path: Path, checkpoints: list[audit_pb2.Checkpoint]) -> LogReport:
    with closing(sqlite3.connect(path)) as db:
        return verify_log(db.execute("SELECT seq, entry, hash FROM audit ORDER BY seq"), checkpoints)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 40),
    per_range=st.sampled_from([1, 2, 4, 8, 64]),
    tamper=st.sampled_from(TAMPERS),
    at=st.integers(0, 40),
    sizes=st.lists(st.tuples(st.integers(0, 44), st.booleans()), max_size=6),
)
def test_the_report_in_ranges_is_the_one_passs(
    size: int, per_range: int, tamper: str, at: int, sizes: list[tuple[int, bool]]
) -> None:
    rows = audit_rows(size)
    checkpoints = checkpoints_at(rows, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        path = _store(Path(tmp) / "store.sqlite", tampered(rows, tamper, at))
        assert verify_store(path, checkpoints, jobs=1, per_range=per_range) == _one_pass(path, checkpoints)


def test_worker_processes_confirm_checkpoints_within_and_between_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_single_pass(*_args: object) -> LogReport:
        raise AssertionError("an intact log was checked again in one pass")

    rows = audit_rows(50)
    checkpoints = checkpoints_at(rows, [(3, True), (8, True), (16, True), (17, True), (49, True), (50, True)])
    path = _store(tmp_path / "store.sqlite", rows)
    with monkeypatch.context() as patched:
        patched.setattr("linkage.auditlog.verify_log", no_single_pass)
        report = verify_store(path, checkpoints, jobs=2, per_range=8)
    assert report.ok and report.entries == 50
    assert report.confirmed == [3, 8, 16, 17, 49, 50]
    assert report == _one_pass(path, checkpoints)


# Rewritten with its hashes, the log is caught by the checkpoint at 40; entries up to 16 are vouched for.
@pytest.mark.parametrize(("tamper", "first_bad"), [("edit", 30), ("rechain", 17), ("gap", 30)])
def test_worker_processes_find_what_one_pass_finds(tmp_path: Path, tamper: str, first_bad: int) -> None:
    rows = audit_rows(50)
    checkpoints = checkpoints_at(rows, [(16, True), (40, True), (50, True)])
    path = _store(tmp_path / "store.sqlite", tampered(rows, tamper, 29))
    report = verify_store(path, checkpoints, jobs=2, per_range=8)
    assert not report.ok and report.first_bad_seq == first_bad
    assert report == _one_pass(path, checkpoints)


def test_where_no_worker_process_can_start_the_log_is_checked_in_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pool(*_args: object, **_kwargs: object) -> None:
        raise OSError(38, "Function not implemented")  # sem_open, where /dev/shm is missing

    monkeypatch.setattr("linkage.auditlog.ProcessPoolExecutor", no_pool)
    rows = audit_rows(20)
    path = _store(tmp_path / "store.sqlite", rows)
    report = verify_store(path, checkpoints_at(rows, [(12, True)]), jobs=2, per_range=4)
    assert report.ok and report.entries == 20 and report.confirmed == [12]


def test_a_range_missing_its_last_entries_is_not_intact(tmp_path: Path) -> None:
    rows = audit_rows(12)
    path = _store(tmp_path / "store.sqlite", rows[:6] + rows[8:])
    assert check_range(path, 0, 4, GENESIS, frozenset()).intact
    assert not check_range(path, 4, 8, None, frozenset()).intact  # entries 7 and 8 gone
    assert not check_range(path, 8, 12, None, frozenset()).intact  # and so the link from 8


def test_a_range_that_is_not_a_power_of_two_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "store.sqlite", audit_rows(3))
    with pytest.raises(ValueError, match="not a power of two"):
        verify_store(path, [], per_range=6)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 70), split=st.integers(0, 6))
def test_a_compact_range_extended_by_the_next_leaves_is_the_whole_ones(size: int, split: int) -> None:
    leaves = [sha256(b"%d" % i).digest() for i in range(size)]
    start = (size >> split) << split  # a multiple of 2**split, as ranges start
    head, tail = CompactRange(), CompactRange()
    for leaf in leaves[:start]:
        head.append(leaf)
    for leaf in leaves[start:]:
        tail.append(leaf)
    if tail.size and start % (1 << (tail.size.bit_length() - 1)):
        with pytest.raises(ValueError, match="cannot start at leaf"):
            head.extend(tail)
        return
    head.extend(tail)
    assert (head.size, head.root()) == (size, root_of(leaves))
