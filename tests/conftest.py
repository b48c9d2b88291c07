from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.db import GatewayDb
from linkage import logs
from linkage.clock import SystemClock
from tests.harness import CapturedLogs, LocalFederation, make_federation


@pytest.fixture
def federation(tmp_path: Path) -> LocalFederation:
    return make_federation(tmp_path, SystemClock())


@pytest.fixture
def captured_logs() -> Iterator[CapturedLogs]:
    """Every log line (JSON, info and up) from here to the test's end, as operators get them."""
    captured = CapturedLogs()
    logs.configure("info", stream=captured)
    yield captured
    logs.configure("info")


@pytest.fixture
async def gateway_db(tmp_path: Path) -> AsyncIterator[GatewayDb]:
    """A gateway's store on its own (its subscriptions, its metadata log)."""
    db = await GatewayDb.open(tmp_path / "gateway.sqlite")
    yield db
    await db.close()
