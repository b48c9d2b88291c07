"""The numbers WatchDeliveries gives its events, which a case system resumes after.

An event is an audit entry, and a store put back to a copy numbers its next entries as the
ones it lost were numbered: resuming after an entry seen before the restore would skip as
many new ones. So each restore this log records starts a run of event numbers of its own,
from the restore's time in milliseconds times 1,000, past any number an earlier copy of the
store gave (no node writes 1,000 entries a millisecond). Before the first restore, an
event's number is its entry's. A number from a copy put aside reads on from where the
restore that replaced it began: the case system is told everything since, and loses
nothing it was not told. Received items are numbered on from a restore's time the same way
(node/redelivery.py)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from node.store import FetchAll

PER_MS = 1_000


@dataclass(frozen=True)
class EventNumbers:
    # Per restore this log records, oldest first: the last entry of the copy put back, and
    # the number its first entry after that is given.
    copies_end: tuple[int, ...] = ()
    numbered_from: tuple[int, ...] = ()

    @classmethod
    async def load(cls, fetchall: FetchAll) -> EventNumbers:
        rows = await fetchall("SELECT log_entries, numbered_from FROM restores ORDER BY log_entries", ())
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows))

    def of_entry(self, seq: int) -> int:
        """The number of the event audit entry `seq` records."""
        run = bisect.bisect_left(self.copies_end, seq)  # the restores whose copy ended before it
        return seq if run == 0 else self.numbered_from[run - 1] + seq - self.copies_end[run - 1] - 1

    def entry_after(self, number: int) -> int:
        """The audit entry to read on after, for a case system that last saw event `number`."""
        run = bisect.bisect_right(self.numbered_from, number)  # the run it was numbered in
        seq = number if run == 0 else self.copies_end[run - 1] + 1 + number - self.numbered_from[run - 1]
        if run < len(self.copies_end):  # that copy of the log went no further here
            seq = min(seq, self.copies_end[run])
        return seq

    def next_from(self, now_ms: int, last_seq: int) -> int:
        """Where a restore recorded now starts numbering: past every number given so far."""
        return max(now_ms * PER_MS, self.of_entry(last_seq) + 1)
