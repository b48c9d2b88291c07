"""The gateway's metadata log under retention: old entries go, a chunk at a time, under an
anchor from which the rest still verifies; the log chains on across restarts, even when
every entry went; and the guard rails keep it append-only for everything else."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.db import GatewayDb
from gateway.metalog import MetaLog
from gateway.server import GatewayServer
from linkage import logs, stories
from linkage.auditlog import GENESIS, verify_chain
from linkage.clock import DAY_MS, ManualClock
from tests.harness import LocalFederation, LogWatch, running
from tests.test_federation import open_case

START_MS = 1_767_225_600_000


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[GatewayDb]:
    db = await GatewayDb.open(tmp_path / "gateway.sqlite")
    yield db
    await db.close()


async def _record(log: MetaLog, clock: ManualClock, days: int, per_day: int) -> None:
    for _ in range(days):
        for i in range(per_day):
            log.record("envelope.forwarded", "amh", counterpart="csc", message_id=f"m{clock.now_ms()}-{i}")
        await log.flush()
        clock.advance(DAY_MS)


async def _verified(db: GatewayDb) -> tuple[int, int]:
    """The log's entries checked from its anchor: (how many, the first seq kept)."""
    anchor = await db.read("SELECT seq, hash FROM metalog_anchor")
    rows = await db.read("SELECT seq, entry, hash FROM metalog ORDER BY seq")
    result = verify_chain(rows, (anchor[0][0], bytes(anchor[0][1])) if anchor else (0, GENESIS))
    assert result.ok, result.problem
    return result.entries, rows[0][0] if rows else 0


async def test_entries_past_retention_go_and_the_rest_still_verifies(db: GatewayDb) -> None:
    clock = ManualClock(START_MS)
    log = MetaLog(db, clock, "gateway")
    await _record(log, clock, days=5, per_day=7)  # days 0-4; now is day 5
    purged = await log.purge(keep_days=2, chunk=3)  # 3 to a transaction
    assert purged == 3 * 7  # days 0-2: older than two days before day 5
    await log.flush()  # the purge recorded in the log itself
    count, first = await _verified(db)
    assert (count, first) == (2 * 7 + 1, 3 * 7 + 1)
    events = [r[0] for r in await db.read("SELECT event FROM metalog ORDER BY seq")]
    assert events[-1] == "metalog.purged"

    restarted = MetaLog(db, clock, "gateway")  # chains on from the last entry
    await restarted.load()
    await _record(restarted, clock, days=1, per_day=2)
    assert (await _verified(db))[0] == 2 * 7 + 1 + 2


async def test_a_log_purged_to_its_last_entry_chains_on_from_the_anchor(db: GatewayDb) -> None:
    clock = ManualClock(START_MS)
    log = MetaLog(db, clock, "gateway")
    await _record(log, clock, days=2, per_day=4)
    clock.advance(10 * DAY_MS)
    assert await log.purge(keep_days=1) == 8
    assert not await db.read("SELECT 1 FROM metalog")  # stopped before the purge's own entry was written
    restarted = MetaLog(db, clock, "gateway")
    await restarted.load()
    await _record(restarted, clock, days=1, per_day=3)
    assert await _verified(db) == (3, 9)


async def test_nothing_above_the_anchor_is_deleted_and_the_anchor_only_moves_forward(db: GatewayDb) -> None:
    clock = ManualClock(START_MS)
    log = MetaLog(db, clock, "gateway")
    await _record(log, clock, days=3, per_day=2)
    await log.purge(keep_days=2)  # entries 1-2 go; the anchor is entry 2
    (anchor_seq,) = (await db.read("SELECT seq FROM metalog_anchor"))[0]
    assert anchor_seq == 2
    raw = sqlite3.connect(db.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM metalog WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="entry of the metadata log"):
            raw.execute("UPDATE metalog_anchor SET seq = 4, hash = x'00'")
        (hash_4,) = raw.execute("SELECT hash FROM metalog WHERE seq = 4").fetchone()
        raw.execute("UPDATE metalog_anchor SET seq = 4, hash = ?", (hash_4,))  # forward, to a real entry: allowed
        with pytest.raises(sqlite3.IntegrityError, match="only moves forward"):
            raw.execute("UPDATE metalog_anchor SET seq = 3, hash = (SELECT hash FROM metalog WHERE seq = 3)")
        with pytest.raises(sqlite3.IntegrityError, match="never removed"):
            raw.execute("DELETE FROM metalog_anchor")
    finally:
        raw.rollback()
        raw.close()


async def test_a_gateway_kept_to_some_days_purges_its_log_as_it_starts_and_the_rest_verifies(
    federation: LocalFederation,
) -> None:
    """`[retention] metalog_days`, served: a gateway started three days after its log was
    written, keeping one day, purges it all (then each hour), and what follows verifies
    from the anchor."""
    clock = ManualClock()
    async with running(federation, nodes=("amh",), clock=clock) as cluster:
        await open_case(cluster, "amh", stories.think_family_people())
    db = await GatewayDb.open(federation.gateway_config.store_path)
    try:
        written, _ = await _verified(db)
    finally:
        await db.close()
    clock.advance(3 * DAY_MS)
    watch = LogWatch('"event":"metalog.purged"')
    logs.configure("info", stream=watch)
    gateway = GatewayServer(dataclasses.replace(federation.gateway_config, metalog_days=1), clock)
    try:
        await gateway.start()
        async with asyncio.timeout(30):
            await watch.seen.wait()
    finally:
        logs.configure("info")
        await gateway.stop(grace=0)
    assert json.loads(watch.line)["purged"] == written
    db = await GatewayDb.open(federation.gateway_config.store_path)
    try:
        count, first = await _verified(db)
        events = [r[0] for r in await db.read("SELECT event FROM metalog ORDER BY seq")]
    finally:
        await db.close()
    assert first == written + 1 and count == len(events) and "metalog.purged" in events
