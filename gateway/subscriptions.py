"""The subscription index: link token -> subscribed node ids.

Kept in SQLite so a restarted gateway routes at once, and mirrored in memory
for the per-message look-up. Nodes also re-assert their subscriptions when
they connect, so a lost gateway database heals itself. Packing ten million
subscriptions takes this machine 15 to 25 s, so a starting gateway does not wait
for it: until the packed index is built, in a thread, each look-up reads SQLite
by its primary key (about 0.1 ms while the build holds the GIL, against a few
µs), and each node's total is kept in SQLite by triggers.

In memory the index is packed, because a national federation holds millions of
family links and the gateway must stay small: every token once, sorted, in one
`bytes` (32 bytes each), a bucket directory over its leading bits (about 8 tokens a bucket),
and each token's subscribers as 2-byte node numbers. That is about 20 bytes
per subscription where Python sets of strings cost over 200. Changes since the
packed base was built sit in a small overlay; past a threshold a new base is
rebuilt from SQLite (the source of truth) in a worker thread and swapped in.

A look-up touches four places at random in what is, at ten million subscriptions,
about 200 MB. On 4 KiB pages each of those also walks the page tables, so the packed
arrays are copied into memory mapped for them alone and offered to the kernel for
2 MiB pages (Linux's transparent huge pages, where it allows them on request).
"""

from __future__ import annotations

import asyncio
import mmap
import sqlite3
import struct
import threading
import time
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from gateway.db import GatewayDb
from linkage import logs
from linkage.readonly import connect_read_only
from linkage.tokens import TOKEN_LEN

TOKENS_PER_BUCKET = 8  # the directory is sized so a look-up scans about this many tokens
REBUILD_AFTER = 100_000  # overlay changes before the packed base is rebuilt
CHECK_STOP_EVERY = 100_000  # SQLite instructions between a build's looks at whether the gateway is stopping

log = logs.get("gateway.subscriptions")


@dataclass(frozen=True)
class PackedRoutes:
    """An immutable snapshot: sorted unique tokens and each one's subscriber numbers."""

    tokens: bytes | mmap.mmap  # TOKEN_LEN bytes per token, ascending
    starts: memoryview  # of unsigned ints: token i's subscribers are nodes[starts[i]:starts[i + 1]]
    nodes: memoryview  # of unsigned shorts: node numbers (indexes into the node-id table)
    buckets: memoryview  # of unsigned ints: tokens whose top `bits` bits are b are tokens[buckets[b]:buckets[b + 1]]
    bits: int

    @classmethod
    def build(cls, rows: Iterable[tuple[bytes, int]]) -> PackedRoutes:
        """From (token, node number) rows in ascending token order."""
        tokens = bytearray()
        starts, nodes = array("I"), array("H")
        last = b""
        for token, node in rows:
            if token != last:
                tokens += token
                starts.append(len(nodes))
                last = token
            nodes.append(node)
        starts.append(len(nodes))
        count = len(starts) - 1
        bits = max(8, min(24, (count // TOKENS_PER_BUCKET).bit_length()))
        # Tokens are sorted, so bucket b starts at the first token whose top bits are >= b.
        buckets, i = array("I"), 0
        for b in range(1 << bits):
            while i < count and _bucket(tokens, i * TOKEN_LEN, bits) < b:
                i += 1
            buckets.append(i)
        buckets.append(count)
        return cls(
            _own_pages(tokens),
            memoryview(_own_pages(starts)).cast("I"),
            memoryview(_own_pages(nodes)).cast("H"),
            memoryview(_own_pages(buckets)).cast("I"),
            bits,
        )

    def __len__(self) -> int:
        return len(self.nodes)

    def find(self, token: bytes) -> Sequence[int]:
        """The subscriber numbers of `token` (empty if none)."""
        bucket = _bucket(token, 0, self.bits)
        end = self.buckets[bucket + 1] * TOKEN_LEN
        at = self.tokens.find(token, self.buckets[bucket] * TOKEN_LEN, end)
        while at > 0 and at % TOKEN_LEN:  # a match straddling two tokens is no match; look further
            at = self.tokens.find(token, at + 1, end)
        if at < 0:
            return ()
        i = at // TOKEN_LEN
        return self.nodes[self.starts[i] : self.starts[i + 1]]


_leading_32_bits = struct.Struct(">I").unpack_from


def _own_pages(data: bytearray | array[int]) -> bytes | mmap.mmap:
    """A copy of `data` in memory mapped for it alone, which the kernel may back with 2 MiB
    pages: at ten million subscriptions the packed arrays' look-up took 1.2 to 1.3 µs against
    1.9 to 2.5 in `bytes`, p99 1.9 to 2.3 against 3.7 to 5.1 (docs/performance.md). Where
    there is no such request (not Linux), or nothing to map, a plain copy."""
    view = memoryview(data).cast("B")
    if not view.nbytes or not hasattr(mmap, "MADV_HUGEPAGE"):
        return bytes(view)
    pages = mmap.mmap(-1, view.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with suppress(OSError):  # a kernel without transparent huge pages refuses the advice
        pages.madvise(mmap.MADV_HUGEPAGE)
    pages[:] = view
    return pages


def _bucket(data: bytes | bytearray, at: int, bits: int) -> int:
    """The bucket of the token at `at` in `data`: its leading `bits` bits (at most 24)."""
    leading: int = _leading_32_bits(data, at)[0]
    return leading >> (32 - bits)


class NodeNumbers:
    """Node ids as 2-byte numbers (a federation has at most 65,536 nodes)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._numbers: dict[str, int] = {}
        self._lock = threading.Lock()  # a rebuild thread numbers nodes too

    def number(self, node_id: str) -> int:
        number = self._numbers.get(node_id)
        if number is not None:
            return number
        with self._lock:
            number = self._numbers.get(node_id)
            if number is None:
                if len(self.ids) >= 1 << 16:
                    raise OverflowError("more than 65,536 nodes in one federation")
                self.ids.append(node_id)
                number = self._numbers[node_id] = len(self.ids) - 1
            return number

    def known(self, node_id: str) -> int | None:
        return self._numbers.get(node_id)


def _reader(path: Path) -> sqlite3.Connection:
    return connect_read_only(path, autocommit=True)


def _load(path: Path, numbers: NodeNumbers, stopping: threading.Event) -> PackedRoutes:
    """Read every subscription (the table's key order is token order) and pack it. Runs in a thread:
    `numbers` is only appended to, and a number once given never changes. Once `stopping` is set
    SQLite abandons the read (sqlite3.OperationalError), so a stopping gateway does not wait for it."""
    with closing(_reader(path)) as db:
        db.set_progress_handler(stopping.is_set, CHECK_STOP_EVERY)

        def rows() -> Iterator[tuple[bytes, int]]:
            for token, node_id in db.execute("SELECT token, node_id FROM subscriptions ORDER BY token, node_id"):
                yield bytes(token), numbers.number(node_id)

        return PackedRoutes.build(rows())


class SubscriptionIndex:
    def __init__(self, db: GatewayDb, numbers: NodeNumbers, counts: Counter[int]) -> None:
        self._db = db
        self._numbers = numbers
        self._base: PackedRoutes | None = None  # until the first build lands, look-ups read SQLite
        self._reader: sqlite3.Connection | None = _reader(db.path)
        # token -> {node number: subscribed?}, newer than the base. While a build runs,
        # the changes it may have missed are kept in `_settling` until it is swapped in.
        self._changes: dict[bytes, dict[int, bool]] = {}
        self._settling: dict[bytes, dict[int, bool]] = {}
        self._count_by_node = counts
        self._stopping = threading.Event()
        self._rebuild: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db: GatewayDb) -> SubscriptionIndex:
        """Ready to answer at once; the packed index is built in the background (`built()`)."""
        numbers = NodeNumbers()
        stored = await db.read("SELECT node_id, subscriptions FROM subscription_counts")
        counts = Counter({numbers.number(node_id): n for node_id, n in stored})
        index = cls(db, numbers, counts)
        index._rebuild = asyncio.create_task(index._rebuild_base())
        return index

    @property
    def packed(self) -> bool:
        return self._base is not None

    async def built(self) -> None:
        """Wait for a build under way (the first, or a rebuild) to land."""
        if self._rebuild is not None:
            await asyncio.shield(self._rebuild)

    def __len__(self) -> int:
        return sum(self._count_by_node.values())

    def count(self, node_id: str) -> int:
        number = self._numbers.known(node_id)
        return 0 if number is None else self._count_by_node[number]

    def _members(self, token: bytes) -> Collection[int]:
        """The token's subscriber numbers. Most tokens have no change since the base was built:
        for them the base's answer is returned as it is, with no set built to merge changes into."""
        if self._base is None:
            return self._stored_members(token)
        base = self._base.find(token)
        settling, changes = self._settling.get(token), self._changes.get(token)
        if settling is None and changes is None:
            return base
        members = set(base)
        for change in (settling, changes):
            for node, present in (change or {}).items():
                if present:
                    members.add(node)
                else:
                    members.discard(node)
        return members

    def _stored_members(self, token: bytes) -> list[int]:
        """Before the first build: SQLite holds every committed change, and memory follows only
        a commit, so the stored rows alone are the answer."""
        assert self._reader is not None
        rows = self._reader.execute("SELECT node_id FROM subscriptions WHERE token = ?", (token,)).fetchall()
        return [self._numbers.number(node_id) for (node_id,) in rows]

    def is_subscribed(self, node_id: str, token: bytes) -> bool:
        number = self._numbers.known(node_id)
        return number is not None and number in self._members(token)

    def subscribers(self, tokens: Iterable[bytes]) -> set[str]:
        ids = self._numbers.ids
        return {ids[n] for token in tokens for n in self._members(token)}

    # What a call changes is chosen inside its transaction: the writer's lock orders a node's
    # overlapping calls, and memory follows each commit before the next call may look, so a
    # change asked for twice at once is made, reported and counted once.

    async def add(self, node_id: str, tokens: Iterable[bytes]) -> list[bytes]:
        """Subscribe the node; the tokens it was not subscribed to before."""
        asked = list(dict.fromkeys(tokens))
        if all(self.is_subscribed(node_id, t) for t in asked):
            return []  # a node re-asserting what it holds: nothing to write
        async with self._db.tx() as db:
            new = [t for t in asked if not self.is_subscribed(node_id, t)]
            await db.executemany(
                "INSERT OR IGNORE INTO subscriptions(token, node_id) VALUES (?, ?)", [(t, node_id) for t in new]
            )
        self._record(node_id, new, True)  # memory follows only a durable commit
        return new

    async def remove(self, node_id: str, tokens: Iterable[bytes]) -> list[bytes]:
        """Unsubscribe the node; the tokens it was subscribed to before."""
        asked = list(dict.fromkeys(tokens))
        if not any(self.is_subscribed(node_id, t) for t in asked):
            return []
        async with self._db.tx() as db:
            gone = [t for t in asked if self.is_subscribed(node_id, t)]
            await db.executemany(
                "DELETE FROM subscriptions WHERE token = ? AND node_id = ?", [(t, node_id) for t in gone]
            )
        self._record(node_id, gone, False)
        return gone

    async def held_by(self, node_id: str, after: bytes, limit: int) -> list[bytes]:
        """Up to `limit` of the node's tokens after `after`, in token order, as committed. The
        table is keyed by token, so a page reads past other nodes' subscriptions on its way (the
        whole table at most, once over all the pages): in a thread, on a connection of its own,
        so neither the loop nor the store's writes wait for it."""

        def read() -> list[bytes]:
            with closing(_reader(self._db.path)) as db:
                db.set_progress_handler(self._stopping.is_set, CHECK_STOP_EVERY)
                rows = db.execute(
                    "SELECT token FROM subscriptions WHERE token > ? AND node_id = ? ORDER BY token LIMIT ?",
                    (after, node_id, limit),
                ).fetchall()
            return [bytes(token) for (token,) in rows]

        return await asyncio.to_thread(read)

    def _record(self, node_id: str, tokens: list[bytes], present: bool) -> None:
        number = self._numbers.number(node_id)
        for token in tokens:
            self._changes.setdefault(token, {})[number] = present
        self._count_by_node[number] += len(tokens) if present else -len(tokens)
        if len(self._changes) >= REBUILD_AFTER and self._rebuild is None:
            self._rebuild = asyncio.create_task(self._rebuild_base())

    async def _rebuild_base(self) -> None:
        """Pack a new base from SQLite: everything in the overlay is committed there already."""
        self._settling, self._changes = self._changes, {}
        started = time.perf_counter()
        try:
            base = await asyncio.to_thread(_load, self._db.path, self._numbers, self._stopping)
            first, self._base, self._settling = self._base is None, base, {}
            log.info(
                "subscriptions.loaded" if first else "subscriptions.rebuilt",
                subscriptions=len(base),
                seconds=round(time.perf_counter() - started, 3),
            )
            if first:
                self._close_reader()
        except Exception:
            # Keep serving from the old base (or SQLite) and both overlays; try again on a later change.
            for token, changes in self._changes.items():
                self._settling.setdefault(token, {}).update(changes)
            self._changes, self._settling = self._settling, {}
            if not self._stopping.is_set():
                log.exception("subscriptions.build_failed", packed=self.packed)
        finally:
            self._rebuild = None

    async def close(self) -> None:
        """Abandon a build under way, and wait for its thread to let go of the database."""
        self._stopping.set()
        await self.built()
        self._close_reader()

    def _close_reader(self) -> None:
        """The SQLite look-ups' connection, needed only until the first build lands."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
