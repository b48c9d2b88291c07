"""Backup and restore keep an audit log that still verifies; an older store is migrated
only after a backup of it is taken."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from linkage.clock import ManualClock, SystemClock
from node.store import Store
from node.store.schema import MIGRATIONS
from tests.harness import make_federation, running, wait_delivered
from tests.test_audit_ig import witnessed
from tests.test_federation import share_think_family


def test_backup_restore_round_trip_still_verifies(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock())
    backup = tmp_path / "amh-backup.sqlite"

    async def play() -> None:
        async with running(federation) as cluster:
            await share_think_family(cluster)
            await wait_delivered(cluster.nodes["amh"], 2)
            # An online backup while the node runs, with SQLite's backup API.
            with sqlite3.connect(cluster.nodes["amh"].config.store_path) as live, sqlite3.connect(backup) as copy:
                live.backup(copy)

    asyncio.run(play())
    restored = tmp_path / "restored"
    shutil.copytree(
        federation.node_configs["amh"].data_dir, restored, ignore=shutil.ignore_patterns("store.sqlite*", "api.sock")
    )
    shutil.copy(backup, restored / "store.sqlite")
    checkpoints = witnessed(federation, "amh", tmp_path / "cp.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "linkage", "audit", "verify", "--config", str(restored / "node.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "OK:" in result.stdout, result.stdout
    # Against the checkpoint lodged at shutdown the backup is shorter: that is evidence, and it is reported.
    against = subprocess.run(
        [
            sys.executable,
            "-m",
            "linkage",
            "audit",
            "verify",
            "--config",
            str(restored / "node.toml"),
            "--checkpoints",
            str(checkpoints),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with sqlite3.connect(backup) as db:
        backed_up = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    with sqlite3.connect(federation.gateway_config.data_dir / "gateway.sqlite") as db:
        lodged = db.execute("SELECT tree_size FROM witnessed WHERE node_id = 'amh'").fetchone()[0]
    expected = "OK:" if backed_up == lodged else f"entries {backed_up + 1}-{lodged} were removed"
    assert expected in against.stdout, against.stdout


def test_an_older_store_is_backed_up_before_it_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version=1;\nCOMMIT;")
        db.execute("INSERT INTO cases VALUES ('c1', 'ref', 1, 'open')")

    async def open_and_check() -> None:
        store = await Store.open(path, ManualClock())
        try:
            assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
            assert (await store.fetchone("SELECT case_ref FROM cases"))[0] == "ref"
        finally:
            await store.close()

    asyncio.run(open_and_check())
    backups = list(tmp_path.glob("store.sqlite.v1.*.bak"))
    assert len(backups) == 1
    with sqlite3.connect(backups[0]) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT case_ref FROM cases").fetchone()[0] == "ref"
