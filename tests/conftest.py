from __future__ import annotations

from pathlib import Path

import pytest

from linkage.clock import SystemClock
from tests.harness import LocalFederation, make_federation


@pytest.fixture
def federation(tmp_path: Path) -> LocalFederation:
    return make_federation(tmp_path, SystemClock())
