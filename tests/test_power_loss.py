"""A power cut (R7): the gateway and both nodes, with their stores, on a disk that loses
every write not yet fsynced (`tests/lazyfs.py`, after LazyFS), cut mid-burst: all three
processes SIGKILLed and the disk's unsynced writes dropped. After each restart and a final
drain, every share the case system was told was accepted is in the recipient's inbox
exactly once, and both stores and audit chains are whole."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from linkage.clock import SystemClock
from linkage.config import GatewayConfig, NodeConfig
from linkage.federation import Federation, publish_directory, renew_certificate, rotate_directory_key, rotate_keys
from linkage.keys import MessageKeys
from linkage.pki import identities
from linkage.v1 import directory_pb2
from tests.harness import make_federation
from tests.process_cluster import process_cluster
from tests.test_crash import EVERYONE, burst, check_exactly_once, drain, prepare, start_again

ROUNDS = 3
MOUNT_TIMEOUT_S = 30
HAS_FUSE = Path("/dev/fuse").exists()


class LazyDisk:
    """A lazy mount of `backing` at `mount`, served by a `tests.lazyfs` process."""

    def __init__(self, backing: Path, mount: Path) -> None:
        self.backing, self.mount = backing, mount
        self._daemon: asyncio.subprocess.Process | None = None

    async def attach(self) -> None:
        self._daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.lazyfs",
            str(self.backing),
            str(self.mount),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._daemon.stdout is not None and self._daemon.stderr is not None
        async with asyncio.timeout(MOUNT_TIMEOUT_S):
            line = await self._daemon.stdout.readline()
        if line.strip() != b"mounted":
            problem = (await self._daemon.stderr.read()).decode(errors="replace").strip().splitlines()
            unavailable(f"the lazy disk did not mount: {problem[-1] if problem else 'no reason given'}")

    def unsynced(self) -> dict[str, int]:
        """Bytes each file holds that the next cut drops (the disk's own report)."""
        return {name: n for name, n in json.loads((self.mount / ".lazyfs-pending").read_text()).items() if n}

    async def cut(self) -> None:
        """The power goes: whatever was not fsynced is gone, and the mount is detached."""
        if self._daemon is not None:
            self._daemon.send_signal(signal.SIGKILL)
            await self._daemon.wait()
            self._daemon = None
        detached = await asyncio.create_subprocess_exec(
            "umount", "-l", str(self.mount), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await detached.wait()


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to mount the lazy disk (FUSE, libfuse2: see .ci/run): {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def lazy_disk(tmp_path: Path) -> AsyncIterator[LazyDisk]:
    if not HAS_FUSE:
        unavailable("no /dev/fuse here")
    disk = LazyDisk(tmp_path / "disk", tmp_path / "mount")
    disk.backing.mkdir()
    disk.mount.mkdir()
    await disk.attach()
    try:
        yield disk
    finally:
        await disk.cut()


WRITER = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=" + sys.argv[2])
db.execute("CREATE TABLE t (x)")
for _ in range(50):
    db.execute("INSERT INTO t VALUES (randomblob(3000))")
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_the_lazy_disk_loses_what_was_not_synced_and_keeps_what_was(tmp_path: Path) -> None:
    """What gives the power-cut test its teeth: a store that does not fsync its commits
    loses them at a cut on this disk; one that does keeps every one."""
    async with lazy_disk(tmp_path) as disk:
        for sync in ("FULL", "OFF"):
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, str(disk.mount / f"{sync}.db"), sync
            )
            assert await writer.wait() == -signal.SIGKILL
        assert disk.unsynced().get("/OFF.db-wal", 0) > 50 * 3000
        await disk.cut()
        await disk.attach()
        with sqlite3.connect(disk.mount / "FULL.db") as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (50,)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with (
            sqlite3.connect(disk.mount / "OFF.db") as db,
            pytest.raises(sqlite3.OperationalError, match="no such table"),
        ):
            db.execute("SELECT count(*) FROM t")


async def power_cuts(tmp_path: Path, rounds: int, seed: int) -> None:
    async with lazy_disk(tmp_path) as disk:
        federation = make_federation(disk.mount / "federation", SystemClock(), nodes=("amh", "csc"))
        rng = random.Random(seed)
        accepted: set[str] = set()
        async with process_cluster(federation, ("amh", "csc")) as cluster:
            assessment_id = await prepare(cluster)
            for _ in range(rounds):
                await burst(cluster, assessment_id, EVERYONE, rng.randint(50, 600), accepted)
                for name in EVERYONE:
                    assert await cluster.reap(name) == -signal.SIGKILL
                await disk.cut()
                await disk.attach()
                await start_again(cluster, list(EVERYONE))
            await drain(cluster)
            check_exactly_once(cluster, accepted)
            codes = await cluster.stop()
        assert set(codes.values()) == {0}, codes
        assert len(accepted) >= rounds * 50


async def test_r7_power_cut_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    await power_cuts(tmp_path, ROUNDS, seed=7)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_power_cut_soak(tmp_path: Path) -> None:
    """The nightly version: 30 cuts."""
    await power_cuts(tmp_path, rounds=30, seed=70)


async def test_every_federation_file_is_whole_after_a_power_cut_once_its_command_returned(tmp_path: Path) -> None:
    """The federation's own files (keys, certificates, entries, directories, configurations)
    are on disk, whole, the moment each command returns: a power cut straight after the last
    one leaves every bundle able to start, with what the commands made."""
    async with lazy_disk(tmp_path) as disk:
        now = SystemClock().now_ms()
        federation = make_federation(disk.mount, SystemClock(), nodes=("amh", "csc"), suite="hybrid")
        fed, csc = federation.fed, federation.node_configs["csc"]
        rotated = rotate_keys(fed, "csc", csc.data_dir, now)
        renew_certificate(fed, csc.tls.cert, now)
        signing_key = rotate_directory_key(fed, now)
        copies = (federation.gateway_config.data_dir, *(c.data_dir for c in federation.node_configs.values()))
        publish_directory(fed, now, copy_to=copies)
        assert disk.unsynced() == {}  # nothing is left for a cut to take
        await disk.cut()
        await disk.attach()

        reopened = Federation.open(fed.root)
        assert reopened.ca().cert == fed.ca().cert
        configs = [GatewayConfig.load(federation.gateway_config.data_dir / "gateway.toml")] + [
            NodeConfig.load(c.data_dir / "node.toml") for c in federation.node_configs.values()
        ]
        for config in configs:
            trust = config.federation.trusted_directory()
            signed = directory_pb2.SignedDirectory.FromString(config.federation.directory.read_bytes())
            assert trust.accept(signed, now).signer == signing_key
            identity = identities(config.tls.cert.read_bytes())[0]
            config.tls.read().check(identity, now)
        assert MessageKeys.load(csc.message_keys).key_id == rotated


def test_the_lazy_disk_keeps_a_cut_file_cut_when_it_grows_again(tmp_path: Path) -> None:
    """Cut short, then written past its old end, before any fsync: the bytes cut read as zeros,
    and are synced as zeros, not as what the disk held before the cut (its operations, called
    directly, with no mount)."""
    try:
        from tests.lazyfs import PAGE, LazyFs
    except (ImportError, OSError) as exc:  # mfusepy finds no libfuse
        unavailable(f"the lazy disk cannot load: {exc}")

    (tmp_path / "f").write_bytes(b"x" * 4 * PAGE)
    disk = LazyFs(tmp_path)
    fd = disk.open("/f", os.O_RDWR)
    try:
        disk.truncate("/f", 10, fd)
        disk.write("/f", b"y", 3 * PAGE, fd)
        seen = disk.read("/f", 4 * PAGE, 0, fd)
        assert seen == b"x" * 10 + bytes(3 * PAGE - 10) + b"y"
        disk.fsync("/f", 0, fd)
        assert (tmp_path / "f").read_bytes() == seen
    finally:
        disk.release("/f", fd)
