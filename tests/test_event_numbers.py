"""Delivery events are numbered so that a case system resuming after any number it was given,
by any copy of the store, misses no event the store now holds (node/event_numbers.py): a
model of a log written, backed up and put back, in any order, against the numbering."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from node.event_numbers import EventNumbers


@dataclass
class Store:
    """A log (each entry an id no other entry has) and the restores it records."""

    log: list[int] = field(default_factory=list)
    restores: dict[int, int] = field(default_factory=dict)  # copy's last entry -> numbered from

    def numbers(self) -> EventNumbers:
        ends = sorted(self.restores)
        return EventNumbers(tuple(ends), tuple(self.restores[b] for b in ends))

    def copy(self) -> Store:
        return Store(list(self.log), dict(self.restores))


Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 40)),
        st.tuples(st.just("backup"), st.just(0)),
        st.tuples(st.just("restore"), st.integers(0, 10)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_case_system_resuming_after_any_number_it_was_given_misses_nothing(script: list[Step]) -> None:
    store, backups, now_ms, next_id = Store(), [Store()], 1_796_000_000_000, 1
    # A case system watching throughout: after each step it reads on from the last number it
    # was given. Each number it was given, with what it had seen by then (entry ids), the log
    # as it stood, and the entry the number named.
    last = 0
    seen: set[int] = set()
    given_numbers: list[tuple[int, frozenset[int], list[int], int]] = []

    for action, n in script:
        if action == "append":
            for _ in range(n):
                store.log.append(next_id)
                next_id += 1
                now_ms += 1  # a thousand times slower than the numbering allows for
        elif action == "backup":
            backups.append(store.copy())
        else:  # put back to a copy, then record it as node/redelivery.py does, with its own entry
            store, now_ms = backups[n % len(backups)].copy(), now_ms + 1
            store.restores[len(store.log)] = store.numbers().next_from(now_ms, len(store.log))
            store.log.append(next_id)
            next_id += 1

        numbers = store.numbers()
        ordered = [numbers.of_entry(seq) for seq in range(1, len(store.log) + 1)]
        assert ordered == sorted(set(ordered))  # each entry its own number, in the log's order
        for number, had, then, seq in given_numbers:
            resumed = numbers.entry_after(number)
            assert all(entry in had for entry in store.log[:resumed])  # nothing unseen is skipped
            if store.log[: len(then)] == then:  # given by this log as it grew: on from exactly there
                assert resumed == seq
        for seq in range(numbers.entry_after(last) + 1, len(store.log) + 1):
            last = numbers.of_entry(seq)
            seen.add(store.log[seq - 1])
            given_numbers.append((last, frozenset(seen), list(store.log), seq))
