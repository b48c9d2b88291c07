"""Message ids are RFC 9562 UUIDv7: version 7, variant 10, ordered by their millisecond."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from linkage.ids import is_uuid7, uuid7


@given(st.integers(min_value=0, max_value=(1 << 48) - 2))
def test_uuid7_is_version_7_and_ordered_by_time(now_ms: int) -> None:
    first, later = uuid7(now_ms), uuid7(now_ms + 1)
    parsed = uuid.UUID(first)
    assert str(parsed) == first and is_uuid7(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == now_ms
    assert first < later


def test_ids_made_in_one_millisecond_ascend() -> None:
    made = [uuid7(1_796_000_000_000) for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_uuid7(i) and uuid.UUID(i).int >> 80 == 1_796_000_000_000 for i in made)
