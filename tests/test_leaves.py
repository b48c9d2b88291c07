"""The recent audit leaves a store keeps for its checkpoints' proofs."""

from __future__ import annotations

from node.store.leaves import RecentLeaves


def _leaf(seq: int, tag: str = "") -> bytes:
    return f"{tag}{seq}".encode()


def test_held_positions_are_answered_and_others_are_not() -> None:
    recent = RecentLeaves(after=10)
    for seq in range(11, 16):
        recent.put(seq, _leaf(seq))
    assert recent.between(10, 15) == [_leaf(s) for s in range(11, 16)]
    assert recent.between(12, 13) == [_leaf(13)]
    assert recent.between(13, 13) == []
    assert recent.between(9, 15) is None  # position 10 was never held
    assert recent.between(11, 16) is None  # position 16 is not written yet
    assert recent.between(14, 12) is None


def test_a_position_written_again_replaces_it_and_drops_any_after_it() -> None:
    recent = RecentLeaves()
    for seq in range(1, 6):
        recent.put(seq, _leaf(seq, "rolled back "))
    recent.put(3, _leaf(3))  # positions 3 to 5 were rolled back; 3 is taken again
    assert recent.between(0, 3) == [_leaf(1, "rolled back "), _leaf(2, "rolled back "), _leaf(3)]
    assert recent.between(0, 4) is None


def test_a_position_not_next_to_what_is_held_starts_afresh() -> None:
    recent = RecentLeaves()
    recent.put(1, _leaf(1))
    recent.put(9, _leaf(9))
    assert recent.between(8, 9) == [_leaf(9)]
    assert recent.between(0, 1) is None


def test_forgotten_and_overflowing_positions_go_from_the_front() -> None:
    recent = RecentLeaves(limit=8)
    for seq in range(1, 7):
        recent.put(seq, _leaf(seq))
    recent.forget(2)
    assert recent.between(1, 6) is None
    assert recent.between(2, 6) == [_leaf(s) for s in range(3, 7)]
    recent.forget(99)  # past the end: everything held goes, and the position it reached stays
    recent.put(7, _leaf(7))
    assert recent.between(6, 7) == [_leaf(7)]
    for seq in range(8, 16):
        recent.put(seq, _leaf(seq))  # the ninth leaf held is over the limit: the oldest half go
    assert recent.between(10, 15) == [_leaf(s) for s in range(11, 16)]
    assert recent.between(9, 15) is None
