"""Message ids are RFC 9562 UUIDv7: version 7, variant 10, ordered by their millisecond, and
ascending in the order they are made even when the clock is set back."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from linkage.ids import Ids, is_peer, is_uuid7, recordable

MS = 1_796_000_000_000


@given(st.integers(min_value=0, max_value=(1 << 48) - 2))
def test_uuid7_is_version_7_and_ordered_by_time(now_ms: int) -> None:
    ids = Ids()
    first, later = ids.make(now_ms), ids.make(now_ms + 1)
    parsed = uuid.UUID(first)
    assert str(parsed) == first and is_uuid7(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == now_ms
    assert first < later


def test_ids_made_in_one_millisecond_ascend() -> None:
    ids = Ids()
    made = [ids.make(MS) for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_uuid7(i) and uuid.UUID(i).int >> 80 == MS for i in made)


@given(st.lists(st.integers(min_value=-60_000, max_value=60_000), min_size=1, max_size=50))
def test_ids_ascend_however_the_clock_moves(steps: list[int]) -> None:
    """A clock stepped back keeps the ids at the last one's millisecond until it passes it."""
    ids, now = Ids(), MS
    made = [ids.make(now)]
    for step in steps:
        now += step
        made.append(ids.make(now))
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_uuid7(i) for i in made)
    assert uuid.UUID(made[-1]).int >> 80 == max(MS, *(MS + sum(steps[: n + 1]) for n in range(len(steps))))


def test_ids_come_after_the_newest_a_store_holds() -> None:
    """A node restarted with its clock set back goes on after what its store says it made."""
    before = Ids()
    newest = [before.make(MS) for _ in range(3)][-1]
    again = Ids()
    again.after(newest)
    again.after(Ids().make(MS - 5_000))  # an older one changes nothing
    again.after("not-an-id")  # nor what is no id of this release's
    made = again.make(MS - 60_000)
    assert made > newest and uuid.UUID(made).int >> 80 == MS


def _id(ms: int, rand: int) -> str:
    """The UUIDv7 of a millisecond and 74 random bits, laid out as RFC 9562 has them."""
    value = ms << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def test_ids_ascend_with_no_randomness_and_borrow_the_next_millisecond_when_one_is_used_up() -> None:
    """Within a millisecond each id is the last plus at least one; the last of the 2**74 a
    millisecond holds is made, and the one after it takes the next millisecond."""
    ids = Ids(randbytes=bytes)  # all zeros: the smallest step each time
    ids.after(_id(MS, (1 << 74) - 3))
    made = [ids.make(MS) for _ in range(3)]
    assert made == [_id(MS, (1 << 74) - 2), _id(MS, (1 << 74) - 1), _id(MS + 1, 0)]
    assert all(is_uuid7(i) for i in made)


def test_what_an_untrusted_party_names_is_recorded_only_in_the_federations_forms() -> None:
    good_id = _id(MS, 1)
    assert recordable(good_id, "csc") == (good_id, "csc", {})
    assert recordable("", "") == ("", "", {})  # nothing named is nothing wrong
    assert recordable("DROP TABLE", "Ms Example") == (
        "",
        "",
        {"message_id_malformed": True, "counterpart_malformed": True},
    )
    assert [is_peer(n, "amh") for n in ("csc", "amh", "CSC", "")] == [True, False, False, False]
