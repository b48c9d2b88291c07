"""Backup and restore keep an audit log that still verifies; an older store is migrated
only after a backup of it is taken."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Callable
from contextlib import closing
from itertools import count
from pathlib import Path

import pyrage
import pytest

from bench.audit import build
from gateway.db import GatewayDb
from gateway.metalog import MetaLog
from linkage import backup, store_notes
from linkage.clock import ManualClock, SystemClock, utc_minute
from linkage.readonly import connect_read_only
from node.store import Store
from node.store.schema import MIGRATIONS
from tests.file_crashes import Crash, crash_at
from tests.harness import audit_events, linkage, make_federation, running, wait_delivered
from tests.test_audit_ig import witnessed
from tests.test_delivery import family_assessment, share
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


# -- encrypted backups: `linkage backup` ----------------------------------------------------

ASSESSED = b"Parent has stopped prescribed medication"  # in amh's store, as the practitioner wrote it


def _staged(*folders: Path) -> list[Path]:
    """Plaintext folders a backup or restore left behind."""
    return [left for folder in folders for left in folder.glob(".backup-*")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entries(store: Path) -> int:
    with closing(connect_read_only(store)) as db:
        return int(db.execute("SELECT count(*) FROM audit").fetchone()[0])


async def test_a_backup_taken_while_the_node_shares_restores_its_store_and_rebuilds_the_node_elsewhere(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    amh = federation.node_configs["amh"]
    toml, gateway_toml = str(amh.data_dir / "node.toml"), str(federation.gateway_config.data_dir / "gateway.toml")
    key, sealed, sealed_gateway = tmp_path / "backup.key", tmp_path / "amh.age", tmp_path / "gateway.age"
    code, out, _ = await linkage("backup", "keygen", "--out", str(key))
    recipient = out.split("public key, to back up to: ")[1].strip()
    assert code == 0 and recipient.startswith("age1") and key.stat().st_mode & 0o077 == 0

    async with running(federation) as cluster:
        assessment_id = await family_assessment(cluster)
        await share(cluster, assessment_id)
        # Taken by another process while this one goes on sharing: a snapshot whose log verifies.
        sharing = asyncio.gather(*(share(cluster, assessment_id) for _ in range(10)))
        made = await linkage("backup", "create", "--config", toml, "--to", recipient, "--out", str(sealed))
        await sharing
        assert made[0] == 0 and "OK: backed up to" in made[1], made
        # The node enters it in its audit log, naming the file by its digest, once only.
        (record,) = store_notes.waiting(amh.store_path)
        left = record.read_bytes()
        for _ in range(2):
            await cluster.nodes["amh"].check_backups()
            assert not record.exists()
            record.write_bytes(left)  # as a node stopped before it removed the record leaves it
        await cluster.nodes["amh"].check_backups()
        (entered,) = await audit_events(cluster.nodes["amh"], "store.backed_up")
        digest = hashlib.sha256(sealed.read_bytes()).hexdigest()
        assert entered["detail"]["sha256"] == digest and entered["detail"]["recipients"] == [recipient]
        assert entered["detail"]["size"] == sealed.stat().st_size and not list(store_notes.waiting(amh.store_path))
        register = await linkage("audit", "register", "--config", toml, "--json")  # for the record of processing
        said = json.loads(register[1])["protection"]["backups"]
        taken = utc_minute(entered["detail"]["taken_at_ms"])
        entries = entered["detail"]["log_entries"]
        assert said == f"the latest taken {taken}, of {entries} audit entries, encrypted with age to 1 classic key(s)"
        gateway_made = await linkage(
            "backup", "create", "--gateway-config", gateway_toml, "--to", recipient, "--out", str(sealed_gateway)
        )
        assert gateway_made[0] == 0 and "metadata log: " in gateway_made[1], gateway_made
        # The gateway enters its own in its metadata log the same way, once only.
        (record,) = store_notes.waiting(federation.gateway_config.store_path)
        left = record.read_bytes()
        await cluster.gateway.check_backups()
        record.write_bytes(left)
        await cluster.gateway.check_backups()
        assert not record.exists()
        running_restore = await linkage(
            "backup", "restore", "--config", toml, "--from", str(sealed), "--identity", str(key)
        )
        assert running_restore[0] == 2 and "stop the node before restoring its store" in running_restore[2]
        await share(cluster, assessment_id)  # after the backup: not in it
        await wait_delivered(cluster.nodes["amh"], 12)
    later = _entries(amh.store_path)
    with closing(sqlite3.connect(federation.gateway_config.store_path)) as db:
        rows = db.execute("SELECT entry FROM metalog WHERE event = 'store.backed_up'").fetchall()
    (gateway_entry,) = [json.loads(entry) for (entry,) in rows]
    assert gateway_entry["detail"]["sha256"] == hashlib.sha256(sealed_gateway.read_bytes()).hexdigest()

    data = sealed.read_bytes()
    assert data.startswith(b"age-encryption.org/v1") and sealed.stat().st_mode & 0o077 == 0
    assert ASSESSED not in data and (amh.data_dir / "keys" / "linkage.key").read_bytes() not in data
    checked = await linkage("backup", "check", "--from", str(sealed), "--identity", str(key), "--work", str(tmp_path))
    assert checked[0] == 0 and "opens and is whole" in checked[1], checked
    backed_up = int(checked[1].split("audit log: ")[1].split(" entries")[0].replace(",", ""))
    assert 0 < backed_up < later

    restored = await linkage("backup", "restore", "--config", toml, "--from", str(sealed), "--identity", str(key))
    assert restored[0] == 0, restored
    assert "follow that with `linkage share status " in restored[1]  # the request it makes at its next start
    assert not amh.store_path.with_name("store.sqlite-wal").exists()  # the old store's journal folded into it
    assert _entries(amh.store_path) == backed_up
    (kept,) = amh.data_dir.glob("store.sqlite.replaced-*")
    assert _entries(kept) == later  # the store it replaced, whole
    assert not _staged(amh.data_dir, tmp_path)
    gateway_restored = await linkage(
        "backup", "restore", "--gateway-config", gateway_toml, "--from", str(sealed_gateway), "--identity", str(key)
    )
    assert gateway_restored[0] == 0, gateway_restored
    async with running(federation) as cluster:  # both serve again from what was restored
        (restore,) = await audit_events(cluster.nodes["amh"], "store.restored")
        assert restore["detail"]["backup_sha256"] == digest  # the backup whose taking it recorded
        await share(cluster, assessment_id)  # the assessment was recorded before the backup
        store = cluster.nodes["amh"].store
        assert store is not None
        (total,) = await store.fetchone("SELECT count(*) FROM outbox")
        await wait_delivered(cluster.nodes["amh"], total)  # what was in flight at the backup goes again
    verified = await linkage("audit", "verify", "--gateway-config", gateway_toml)
    assert verified[0] == 0, verified

    rebuilt = tmp_path / "rebuilt"
    whole = await linkage("backup", "restore", "--into", str(rebuilt), "--from", str(sealed), "--identity", str(key))
    assert whole[0] == 0, whole
    assert "follow that with `linkage share status " in whole[1]
    for name in ("node.toml", "directory.pb", "keys/linkage.key", "keys/signing.key", "tls/node.key", "tls/node.pem"):
        assert (rebuilt / name).read_bytes() == (amh.data_dir / name).read_bytes(), name
    assert (rebuilt / "keys" / "linkage.key").stat().st_mode & 0o077 == 0
    assert _entries(rebuilt / "store.sqlite") == backed_up
    assert (await linkage("audit", "verify", "--config", str(rebuilt / "node.toml")))[0] == 0


def test_a_backup_that_is_not_what_it_should_be_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """Each refusal says why in a line, and leaves the store as it was."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh", "csc"))
    amh, csc = (backup.Member.of(federation.node_configs[n]) for n in ("amh", "csc"))
    for member in (amh, csc):
        build(member.store, 300)
    key = tmp_path / "backup.key"
    to = backup.recipients([backup.generate_key(key, "2026-12-04T00:00:00+00:00")])
    keys = backup.identities(key)
    sealed = tmp_path / "amh.age"
    backup.take(amh, sealed, to, 1)

    def refused(message: str, call: Callable[[], object]) -> None:
        before = amh.store.read_bytes()
        with pytest.raises(backup.BackupError, match=message):
            call()
        assert amh.store.read_bytes() == before and not _staged(amh.data_dir)

    with pytest.raises(backup.BackupError, match="is never written over"):
        backup.generate_key(key, "")
    refused("is not an age public key", lambda: backup.recipients(["age1notakey"]))
    empty = tmp_path / "empty.keys"
    empty.write_text("# no key here yet\n")
    refused("no recipient: give --to age1", lambda: backup.recipients([str(empty)]))
    refused(f"{empty} holds no age secret key", lambda: backup.identities(empty))
    refused("no backup at", lambda: backup.restore_store(amh, tmp_path / "never-taken.age", keys, 2))
    refused("is inside the node's folder", lambda: backup.take(amh, amh.data_dir / "keys" / "amh.age", to, 1))
    assert amh.outside == ()  # an enrolled bundle keeps everything in its folder: a backup holds it all
    elsewhere = tmp_path / "ca.pem"
    elsewhere.write_bytes((amh.data_dir / "tls" / "ca.pem").read_bytes())
    config = federation.node_configs["amh"]
    moved = dataclasses.replace(config, tls=dataclasses.replace(config.tls, ca=elsewhere))
    assert backup.Member.of(moved).outside == (elsewhere,)  # said when a backup is taken: it is not in it
    other = tmp_path / "other.key"
    backup.generate_key(other, "")
    refused("none of the keys given opens it", lambda: backup.restore_store(amh, sealed, backup.identities(other), 2))
    damaged = tmp_path / "damaged.age"
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    refused("damaged or was altered", lambda: backup.restore_store(amh, damaged, keys, 2))
    refused("not of node 'csc'", lambda: backup.restore_store(csc, sealed, keys, 2))
    refused(
        "none of the keys given opens it",
        lambda: backup.restore_store(amh, federation.node_configs["amh"].store_path, keys, 2),
    )
    # Anyone with the public key can make an age file: what is inside is checked all the same.
    forged, plain = tmp_path / "forged.age", tmp_path / "forged.tar"
    with tarfile.open(sealed_tar(sealed, keys, tmp_path), "r") as real, tarfile.open(plain, "w") as tar:
        manifest = real.extractfile(backup.MANIFEST)
        assert manifest is not None
        info = real.getmember(backup.MANIFEST)
        tar.addfile(info, manifest)
        tar.add(csc.store, backup.STORE)  # another store under amh's manifest
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("its store is not the one its manifest describes", lambda: backup.restore_store(amh, forged, keys, 2))
    with tarfile.open(plain, "w") as tar:
        tar.add(csc.store, backup.STORE)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("holds no manifest.json", lambda: backup.restore_store(amh, forged, keys, 2))
    with tarfile.open(plain, "w") as tar:
        tar.add(csc.store, backup.STORE)
        tar.add(amh.store, backup.STORE)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("holds store.sqlite twice", lambda: backup.restore_store(amh, forged, keys, 2))
    strange = tmp_path / backup.MANIFEST
    strange.write_text(json.dumps({"format": backup.FORMAT, "kind": "printer"}))
    with tarfile.open(plain, "w") as tar:
        tar.add(strange, backup.MANIFEST)
        tar.add(amh.store, backup.STORE)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("neither a node nor the gateway", lambda: backup.restore_store(amh, forged, keys, 2))
    for manifest_text, said in (
        (json.dumps({"format": "linkage-backup/9", "kind": "node"}), f"this release reads {backup.FORMAT}"),
        (json.dumps({"format": backup.FORMAT, "kind": "node"}), "the backup's manifest cannot be read"),
        ("{not json", "the backup's manifest cannot be read"),
    ):
        strange.write_text(manifest_text)
        with tarfile.open(plain, "w") as tar:
            tar.add(strange, backup.MANIFEST)
            tar.add(amh.store, backup.STORE)
        forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
        refused(re.escape(said), lambda: backup.restore_store(amh, forged, keys, 2))
    strange.write_text(json.dumps({"format": backup.FORMAT, "kind": "printer"}))
    with tarfile.open(plain, "w") as tar:
        tar.add(sealed_manifest(sealed, keys, tmp_path), backup.MANIFEST)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("the backup holds no store.sqlite", lambda: backup.restore_store(amh, forged, keys, 2))
    escaping = tmp_path / "escaping"
    escaping.write_bytes(b"x" * 1_000_000)  # more than a pipe holds: the decryption must not wait on it
    with tarfile.open(plain, "w") as tar:
        tar.add(escaping, f"{backup.BUNDLE}/../../escaped")
        tar.add(amh.store, backup.STORE)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("is not a Linkage backup", lambda: backup.restore_all(forged, keys, tmp_path / "rebuilt", 1))
    assert not (tmp_path / "escaped").exists()
    with tarfile.open(plain, "w") as tar:  # a record of a backup never taken, for the node to enter
        tar.add(strange, f"{backup.BUNDLE}/store.sqlite.backups/forged.json")
        tar.add(amh.store, backup.STORE)
    forged.write_bytes(pyrage.encrypt(plain.read_bytes(), to.for_age))
    refused("a store's own file", lambda: backup.restore_all(forged, keys, tmp_path / "rebuilt", 1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "node.toml").write_text("")
    refused("is not empty", lambda: backup.restore_all(sealed, keys, tmp_path / "full", 1))

    lost = tmp_path / "lost.age"
    with pytest.MonkeyPatch.context() as patch:  # a file gone while the archive is written
        patch.setattr(backup, "_bundle_files", lambda member: ["node.toml", "gone-meanwhile"])
        with pytest.raises(FileNotFoundError):
            backup.take(amh, lost, to, 1)
    assert not lost.exists() and not list(tmp_path.glob(".lost.age*"))  # never a part passing for whole

    with sqlite3.connect(amh.store) as db:  # an entry edited: the backup is not taken
        db.execute("UPDATE audit SET entry = replace(entry, 'csc', 'xyz') WHERE seq = 7")
    refused("the audit log fails at entry 7", lambda: backup.take(amh, tmp_path / "edited.age", to, 1))
    assert not (tmp_path / "edited.age").exists()


def test_a_key_file_or_member_that_cannot_be_used_is_refused_saying_what_is_wrong(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    key = tmp_path / "backup.key"
    to = backup.recipients([backup.generate_key(key, "")])
    mixed = tmp_path / "mixed.keys"
    mixed.write_text(f"{key.read_text()}\nage1 is a public key, not a secret one\n")
    with pytest.raises(backup.BackupError, match=re.escape(f"{mixed} holds a line that is not an age secret key")):
        backup.identities(mixed)
    with pytest.raises(backup.BackupError, match=re.escape(f"cannot read {tmp_path}")):
        backup.identities(tmp_path)  # a folder given where the file was meant
    assert not amh.store.exists()  # an enrolled node makes its store as it first starts
    with pytest.raises(backup.BackupError, match=re.escape(f"no store at {amh.store}: nothing to back up")):
        backup.take(amh, tmp_path / "amh.age", to, 1)
    assert not (tmp_path / "amh.age").exists() and not _staged(amh.data_dir)


def test_plaintext_a_killed_backup_left_is_removed_by_the_next_and_a_running_one_s_is_not(tmp_path: Path) -> None:
    """A backup or restore stages plaintext in a private folder named for its process; one
    killed mid-way cannot remove its own, so the next one does, but never a live one's."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    build(amh.store, 50)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    killed = amh.data_dir / f".backup-{int(ended.stdout)}-x1"
    running = amh.data_dir / f".backup-{os.getpid()}-x2"  # this process: alive
    for folder in (killed, running):
        folder.mkdir()
        (folder / backup.STORE).write_bytes(amh.store.read_bytes())
    key = tmp_path / "backup.key"
    backup.take(amh, tmp_path / "amh.age", backup.recipients([backup.generate_key(key, "")]), 1)
    assert _staged(amh.data_dir) == [running]  # the killed one's removed; this one's own gone as it ended


def test_a_store_too_damaged_to_open_is_replaced_whole_and_kept_and_leaves_no_journal(tmp_path: Path) -> None:
    """No journal of the old store is left beside the restored one, where SQLite would read
    it as that store's (here SQLite removes it, as it holds nothing it can apply)."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    build(amh.store, 100)
    key = tmp_path / "backup.key"
    sealed = tmp_path / "amh.age"
    taken = backup.take(amh, sealed, backup.recipients([backup.generate_key(key, "")]), 1).store.sha256
    amh.store.write_bytes(b"not a database at all" * 100)
    wal = amh.store.with_name(amh.store.name + "-wal")
    wal.write_bytes(b"a journal SQLite cannot fold in")
    _, kept = backup.restore_store(amh, sealed, backup.identities(key), 2)
    assert kept is not None and _sha256(amh.store) == taken and _entries(amh.store) == 100
    assert kept.read_bytes() == b"not a database at all" * 100
    assert not wal.exists()


def sealed_manifest(sealed: Path, keys: list[backup.PrivateKey], folder: Path) -> Path:
    """The manifest inside a backup, as a file."""
    with tarfile.open(sealed_tar(sealed, keys, folder), "r") as tar:
        manifest = tar.extractfile(backup.MANIFEST)
        assert manifest is not None
        path = folder / "real-manifest.json"
        path.write_bytes(manifest.read())
    return path


def sealed_tar(sealed: Path, keys: list[backup.PrivateKey], folder: Path) -> Path:
    """The tar archive inside a backup."""
    plain = folder / "opened.tar"
    plain.write_bytes(pyrage.decrypt(sealed.read_bytes(), keys))
    return plain


def test_a_restore_cut_short_at_any_point_leaves_a_whole_store_and_running_it_again_finishes(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    build(amh.store, 200)
    key = tmp_path / "backup.key"
    to = backup.recipients([backup.generate_key(key, "")])
    sealed = tmp_path / "amh.age"
    taken = backup.take(amh, sealed, to, 1).store.sha256
    # The store the restore replaces, as a node killed mid-run leaves it: 300 entries in the
    # store file, then 50 removed in its write-ahead log, which a reader applies.
    longer = tmp_path / "longer.sqlite"
    build(longer, 300)
    with closing(sqlite3.connect(longer)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("DELETE FROM audit WHERE seq > 250")
        db.commit()
        old = {suffix: longer.with_name(longer.name + suffix).read_bytes() for suffix in ("", "-wal")}
    for step in count(1):
        for left in [*amh.data_dir.glob("store.sqlite*")]:
            if left.is_file():  # not the folder of backup records take() left
                left.unlink()
        for suffix, data in old.items():
            amh.store.with_name(amh.store.name + suffix).write_bytes(data)
        try:
            with crash_at(step):
                backup.restore_store(amh, sealed, backup.identities(key), step)
        except Crash:
            assert _entries(amh.store) in (200, 250), step  # the old store or the restored one, whole
            backup.restore_store(amh, sealed, backup.identities(key), 10_000 + step)  # run again: it finishes
            assert _sha256(amh.store) == taken
            continue
        assert _sha256(amh.store) == taken and _entries(amh.store) == 200
        (kept,) = amh.data_dir.glob("store.sqlite.replaced-*")
        assert _entries(kept) == 250  # the old store, its journal folded in
        assert step > 5  # it was cut at every step before this one
        break


def test_a_store_replaced_twice_in_one_millisecond_is_kept_both_times(tmp_path: Path) -> None:
    """Restored twice at the same wall time (the clock set back between, say): the second
    keeps the store it replaces beside the first's, rather than fail on the name."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    build(amh.store, 20)
    key = tmp_path / "backup.key"
    sealed = tmp_path / "amh.age"
    backup.take(amh, sealed, backup.recipients([backup.generate_key(key, "")]), 1)
    for _ in range(3):
        backup.restore_store(amh, sealed, backup.identities(key), 5)
    kept = sorted(p.name for p in amh.data_dir.glob("store.sqlite.replaced-*"))
    assert kept == ["store.sqlite.replaced-5", "store.sqlite.replaced-5-2", "store.sqlite.replaced-5-3"]
    assert all(_entries(amh.data_dir / name) == 20 for name in kept)


async def test_a_store_that_is_not_whole_or_not_its_kind_s_is_refused_saying_which(
    tmp_path: Path, gateway_db: GatewayDb
) -> None:
    """What `backup create` and `backup restore` check a store by (`check_store`): it must be
    a SQLite file, whole by SQLite's own check, with its kind's hash-chained log intact."""
    not_sqlite = tmp_path / "notes.sqlite"
    not_sqlite.write_bytes(b"a practitioner's notes, not a database\n" * 200)
    with pytest.raises(backup.BackupError, match="the store cannot be read"):
        backup.check_store(not_sqlite, "node")

    node_store = tmp_path / "node.sqlite"
    build(node_store, 30)
    assert backup.check_store(node_store, "node").log_entries == 30
    with pytest.raises(backup.BackupError, match=r"this is not a gateway's store \(it has no metalog table\)"):
        backup.check_store(node_store, "gateway")

    torn = tmp_path / "torn.sqlite"  # an index that no longer agrees with its table
    with closing(sqlite3.connect(torn)) as db:
        db.execute("CREATE TABLE audit(seq INTEGER PRIMARY KEY, entry TEXT)")
        db.execute("CREATE INDEX audit_by_entry ON audit(entry)")
        db.executemany("INSERT INTO audit(entry) VALUES (?)", [(f"entry-{n:04d}",) for n in range(50)])
        db.commit()
        ((page_size,), (root,)) = (
            db.execute("PRAGMA page_size").fetchone(),
            db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'audit_by_entry'").fetchone(),
        )
    data = bytearray(torn.read_bytes())
    page = slice((root - 1) * page_size, root * page_size)
    at = data[page].index(b"entry-0049") + (root - 1) * page_size  # the last key: still in order, now wrong
    data[at : at + 10] = b"entry-0050"
    torn.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match=r"the store fails SQLite's integrity check: .*audit_by_entry"):
        backup.check_store(torn, "node")

    log = MetaLog(gateway_db, ManualClock(), "gw")
    for n in range(5):
        log.record("resolve", "amh", message_id=f"m{n}")
    await log.flush()
    assert backup.check_store(gateway_db.path, "gateway").log_entries == 5
    async with gateway_db.tx() as db:  # as someone with the file would: its guard dropped first
        for (name,) in await db.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            await db.execute(f"DROP TRIGGER {name}")
        await db.execute("UPDATE metalog SET entry = replace(entry, 'amh', 'xyz') WHERE seq = 3")
    with pytest.raises(backup.BackupError, match="the metadata log fails at entry 3"):
        backup.check_store(gateway_db.path, "gateway")
