"""Opening the store, migrating it, and the one way to change it: a write
transaction that carries its audit entries.

One writer connection, one asyncio lock: a single writer. Its statements run
directly on the event loop (each is microseconds of B-tree work in the page
cache; a thread hop per statement would cost more than the statement). The
COMMIT, which waits for fsync (synchronous=FULL), runs in the store's thread
when the disk is slow or the store is busy, and on the loop otherwise.

Writes are group-committed: each `tx()` is a SAVEPOINT inside one
`BEGIN IMMEDIATE` transaction, and whoever finds nobody else waiting commits the
group, one fsync for all. Nobody returns from `tx()` before that COMMIT is
durable, so "acknowledge after commit" still holds; a failed `tx()` rolls back
to its savepoint and leaves the others intact.

Reads go to other connections, which in WAL mode see only committed data:
nothing can be read (and sent on) that a crash could still undo. Most reads run
in aiosqlite's thread; an indexed point look-up on the hot path (`lookup`) runs
on the loop, where it costs less than the thread hop would. The audit
chain head is held in memory, chained through the group, and published (for
checkpoints) only when the group commits. The frontier's stored copy (`audit_head`), which
only saves opening a long log from hashing every entry, is rewritten every HEAD_EVERY entries
rather than at every COMMIT (a page fewer per COMMIT); opening catches up from it.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite

from linkage import logs
from linkage.auditlog import GENESIS, AuditEntry, chain_hash, entry_leaf
from linkage.clock import Clock
from linkage.exclusive import Exclusive
from linkage.merkle import CompactRange
from linkage.readonly import connect_read_only
from linkage.v1 import summary_pb2
from linkage.writability import StoreUnusable, Writability, log_failure, opening
from node.audit_events import AuditEvent
from node.store.leaves import RecentLeaves
from node.store.schema import MIGRATIONS

log = logs.get("node.store")
INLINE_COMMIT_S = 0.0005  # COMMIT on the loop only while the last one took less than this
# A COMMIT this soon after the last one ended goes to the thread however fast the disk: the
# store is busy, so the loop has other work for the fsync's wait, and the transactions that
# queue meanwhile share the next COMMIT. Decided by the last COMMIT's duration alone, four in
# five stayed on the loop under load, each waited for alone (the bench's sender: 0.27 COMMITs
# a message, against 0.10 with this, and 10% more messages a second).
BUSY_GAP_S = 0.0005
MAX_GROUP = 256  # transactions per COMMIT at most, so a steady stream still commits
HEAD_EVERY = 1024  # audit entries between rewrites of the stored frontier: opening hashes at most these
SYSTEM_ACTOR = {"id": "system", "name": "", "role": "system"}
# secure_delete: what is deleted (retention's purge of received messages and sent bodies) is
# overwritten in the file, not left in free pages. Many SQLite builds have it on already; it is
# set so that every build does.
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000", "secure_delete=ON")
# The writer's savepoint journal (one SAVEPOINT per `tx()`, to undo one member of a group)
# holds the old copy of every page a member changes. Past 64 KiB SQLite spills it to a temp
# file, one write per page, on the loop; it is never read after a crash (the WAL is), so it
# stays in memory. Only the writer: its statements are small, while a reader's sort may not be.
WRITER_PRAGMAS = (*PRAGMAS, "temp_store=MEMORY")


# A read of one row: Store.fetchone (committed data) or Tx.fetchone (as inside a transaction),
# so that a check made before the work can be made again inside its transaction.
FetchOne = Callable[[str, Iterable[Any]], Awaitable[Any]]
FetchAll = Callable[[str, Iterable[Any]], Awaitable[list[Any]]]


class TransactionLost(RuntimeError):
    """SQLite rolled back the whole transaction (a full disk, an I/O error): no part of it
    stands, so nothing may carry on inside it."""


class SchemaTooNewError(StoreUnusable):
    """The store was written by a newer Linkage; refusing to touch it."""


class Rows:
    """A statement's result inside a transaction (awaitable like aiosqlite's, already computed)."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self.lastrowid = cursor.lastrowid
        self.rowcount = cursor.rowcount

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


def actor_of(practitioner: summary_pb2.Practitioner | None) -> dict[str, str]:
    if practitioner is None:
        return SYSTEM_ACTOR
    return {"id": practitioner.id, "name": practitioner.name, "role": practitioner.role}


class Tx:
    """One write transaction. Audit entries join it and commit or vanish with it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self.now_ms = store.clock.now_ms()
        self._seq, self._hash, tail = store._tail
        self._frontier = CompactRange(tail.size, tail.hashes)
        self._recent = store.recent_leaves
        self._on_commit: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction is durably committed (never if it is not)."""
        self._on_commit.append(callback)

    @contextmanager
    def part(self) -> Iterator[None]:
        """A part of this transaction that fails alone: on an exception its writes, audit
        entries and commit callbacks vanish, and the rest of the transaction stands, unless
        SQLite ended the whole transaction or the part could not be undone (TransactionLost)."""
        seq, chain, frontier, callbacks = (
            self._seq,
            self._hash,
            CompactRange(self._frontier.size, self._frontier.hashes),
            len(self._on_commit),
        )
        self.db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException as exc:
            if not self.db.in_transaction:
                raise TransactionLost(f"the transaction was rolled back as a whole: {exc}") from exc
            try:
                self.db.execute("ROLLBACK TO part")
                self.db.execute("RELEASE part")
            except sqlite3.Error as undo:  # its writes cannot be parted from the rest: none may stand
                raise TransactionLost(f"a part of the transaction could not be undone: {undo}") from exc
            self._seq, self._hash, self._frontier = seq, chain, frontier
            del self._on_commit[callbacks:]
            raise
        self.db.execute("RELEASE part")

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> Rows:
        return Rows(self.db.execute(sql, tuple(params)))

    async def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        self.db.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """The first row of a query, as it stands inside this transaction (Store.fetchone's twin)."""
        return self.db.execute(sql, tuple(params)).fetchone()

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Every row of a query, as it stands inside this transaction (Store.fetchall's twin)."""
        return self.db.execute(sql, tuple(params)).fetchall()

    async def audit(
        self,
        event: AuditEvent,
        actor: summary_pb2.Practitioner | None = None,
        *,
        tokens: Iterable[bytes] = (),
        summary_id: str = "",
        message_id: str = "",
        counterpart: str = "",
        decision: str = "",
        lawful_ground: str = "",
        rationale: str = "",
        detail: dict[str, Any] | None = None,
    ) -> int:
        self._seq += 1
        entry = AuditEntry(
            seq=self._seq,
            ts_ms=self.now_ms,
            event=event,
            actor=actor_of(actor),
            tokens=sorted(t.hex() for t in tokens),
            summary_id=summary_id,
            message_id=message_id,
            counterpart=counterpart,
            decision=decision,
            lawful_ground=lawful_ground,
            rationale=rationale,
            detail=detail or {},
        )
        canonical = entry.canonical()
        self._hash = chain_hash(self._hash, canonical)
        leaf = entry_leaf(canonical)
        self._frontier.append(leaf)
        self._recent.put(self._seq, leaf)
        self.db.execute(
            "INSERT INTO audit(seq, ts_ms, event, counterpart, entry, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (self._seq, self.now_ms, event, counterpart, canonical, self._hash),
        )
        return self._seq


class _Group:
    """Transactions sharing one COMMIT, each told of its outcome through its own future (a
    member that gives up waiting cancels only its own)."""

    def __init__(self) -> None:
        self.members: list[asyncio.Future[None]] = []
        self.on_commit: list[Callable[[], None]] = []

    def join(self) -> asyncio.Future[None]:
        member: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.members.append(member)
        return member

    def committed(self) -> None:
        for member in self.members:
            if not member.done():
                member.set_result(None)

    def failed(self, error: Exception) -> None:
        for member in self.members:
            if not member.done():
                member.set_exception(error)
                member.exception()  # retrieved here too: a member that gave up need not warn


def _writer(path: Path) -> sqlite3.Connection:
    # Shared with the commit thread, but only ever used by whoever holds the store's lock.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in WRITER_PRAGMAS:
        db.execute(f"PRAGMA {pragma}")
    return db


async def _reader(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS[1:]:
            await db.execute(f"PRAGMA {pragma}")
    except BaseException:
        await db.close()
        raise
    return db


def _read_only(path: Path) -> sqlite3.Connection:
    db = connect_read_only(path, autocommit=True)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _frontier(db: sqlite3.Connection, head_seq: int) -> tuple[CompactRange, int]:
    """The Merkle frontier of the committed log, and the size its stored copy was at: the
    stored copy extended by the entries committed after it, or rebuilt from them all if it
    is ahead of the log."""
    row = db.execute("SELECT seq, frontier FROM audit_head WHERE id = 1").fetchone()
    frontier = CompactRange.from_bytes(bytes(row[1])) if row else CompactRange()
    if frontier.size > head_seq:
        frontier = CompactRange()
    stored = frontier.size
    # As the entries stand, gaps and all: a tampered log must still open for verify to name it.
    for (entry,) in db.execute("SELECT entry FROM audit WHERE seq > ? ORDER BY seq", (stored,)):
        frontier.append(entry_leaf(entry))
    return frontier, stored


def _leaves(db: sqlite3.Connection, after: int, upto: int) -> Iterator[bytes]:
    """Leaf hashes of audit entries after..upto, or LookupError if any is missing."""
    expected = after + 1
    for seq, entry in db.execute("SELECT seq, entry FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upto)):
        if seq != expected:
            raise LookupError(f"audit entry {expected} is missing from the store")
        yield entry_leaf(entry)
        expected += 1
    if expected != upto + 1:
        raise LookupError(f"the store's audit log ends before entry {upto}")


class Store:
    def __init__(
        self, path: Path, db: sqlite3.Connection, reader: aiosqlite.Connection, clock: Clock, exclusive: Exclusive
    ) -> None:
        self.path = path
        self.db = db
        self._exclusive = exclusive  # this process's alone while open
        self.reader = reader
        self._quick: sqlite3.Connection | None = None
        self.clock = clock
        self._lock = asyncio.Lock()
        self._waiting = 0  # transactions queued for the lock: while any are, the group stays open
        self._group: _Group | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_at = 0.0  # loop time by which the flusher commits the open group
        self._hurry = asyncio.Event()  # the flusher's deadline moved earlier
        self._fsync_s = 1.0  # the last COMMIT's duration: the first goes to a thread
        self._committed_at = -math.inf  # when the last COMMIT ended (perf_counter)
        self._committing: asyncio.Future[None] | None = None  # a COMMIT running in its thread
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        # The committed audit head (what checkpoints sign) and the tail the open group has chained to.
        self._head_seq = 0
        self._head_hash = GENESIS
        self.frontier = CompactRange()
        self._head_stored = 0  # the size of the frontier last written to audit_head
        self._tail: tuple[int, bytes, CompactRange] = (0, GENESIS, self.frontier)
        self.recent_leaves = RecentLeaves()  # the checkpointer forgets what the witness holds
        # Set when a commit brings the audit log to `wake_at` entries or more: the checkpointer
        # says when it next has work, so it is not woken by every commit in between.
        self.appended = asyncio.Event()
        self.wake_at = 0
        # Erasures written (node/erasure.py), counted as each is, and as of the last COMMIT: a
        # transaction finding the first where the second stood before a read began knows that
        # the read saw every erasure written before it (node/chronology.py).
        self.erasures = 0
        self.erasures_committed = 0
        self._next_commit: asyncio.Event | None = None  # made only while someone waits for one
        self.writability = Writability(log)

    @classmethod
    async def open(cls, path: Path, clock: Clock) -> Store:
        exclusive = Exclusive.take(path)
        try:
            with opening(path):
                db = _writer(path)
        except BaseException:
            exclusive.release()
            raise
        try:
            with opening(path):
                cls._migrate(db, path, clock)
                row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                head_seq, head_hash = (int(row[0]), bytes(row[1])) if row else (0, GENESIS)
                frontier, stored = _frontier(db, head_seq)
                reader = await _reader(path)
        except BaseException:  # nothing is left open by a store that did not open
            db.close()
            exclusive.release()
            raise
        store = cls(path, db, reader, clock, exclusive)
        store._head_seq, store._head_hash, store._head_stored = head_seq, head_hash, stored
        store.frontier = frontier
        store._tail = (head_seq, head_hash, frontier)
        store.recent_leaves = RecentLeaves(after=head_seq)
        return store

    @staticmethod
    def _migrate(db: sqlite3.Connection, path: Path, clock: Clock) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise SchemaTooNewError(
                f"store schema version {version} is newer than this Linkage supports ({len(MIGRATIONS)}); "
                "upgrade Linkage instead of opening it with an older release"
            )
        if 0 < version < len(MIGRATIONS):
            # Never migrate the only copy: take a consistent backup first.
            backup = path.with_name(f"{path.name}.v{version}.{clock.now_ms()}.bak")
            with closing(sqlite3.connect(backup)) as target:
                db.backup(target)
            log.info("store.backed_up_before_migration", schema=version, target=backup.name)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits, so each migration is its own explicit transaction.
            db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    async def close(self) -> None:
        """Commit what waits, then close, whatever fails on the way: a connection left open
        keeps its thread, and the process could not exit."""
        try:
            if self._flusher is not None:
                self._flush_within(0)
                await self._flusher
            if self._committing is not None:
                # A cancelled caller may have left its COMMIT running: the connection must outlive it.
                await asyncio.wait([self._committing])
            self._committer.shutdown()
            if self._head_seq != self._head_stored and not self.db.in_transaction:
                try:
                    self._store_head(self.frontier)  # so that opening it next needs no catching up
                except sqlite3.Error as exc:  # a disk that refuses it: the next start catches up from the log
                    log_failure(log, "store.head_not_stored", exc, seq=self._head_seq)
        finally:
            if self._quick is not None:
                self._quick.close()
            await self.reader.close()
            self.db.close()
            self._exclusive.release()

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    @asynccontextmanager
    async def tx(self, linger_s: float = 0.0) -> AsyncIterator[Tx]:
        """One write transaction, committed (with any others queued meanwhile) before this returns.

        `linger_s` lets its COMMIT wait that long for later transactions to share the fsync,
        unless one that may not wait joins first: for records nobody outside is waiting on,
        which a crash would only cause to be asked for again (what the gateway did with a
        message). It still returns only once committed."""
        await self._acquire()
        group: _Group | None = None
        member: asyncio.Future[None] | None = None
        try:
            if self._group is None:
                try:
                    if self.db.in_transaction:  # a failed group whose ROLLBACK failed too (`_roll_back`)
                        self.db.execute("ROLLBACK")
                    self.db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:  # a store remounted read-only refuses here, before any write
                    self.writability.failed(exc)
                    raise
                self._group = _Group()
            group = self._group
            self.db.execute("SAVEPOINT tx")
            tx = Tx(self)
            try:
                yield tx
            except BaseException as exc:
                self.writability.failed(exc)
                if self.db.in_transaction:
                    try:
                        self.db.execute("ROLLBACK TO tx")
                        self.db.execute("RELEASE tx")
                    except sqlite3.Error as undo:  # its rows cannot be parted from the group's: none stay
                        log.error("store.undo_failed", error=type(undo).__name__)
                        self._roll_back(
                            group, TransactionLost(f"a transaction in its group could not be undone: {undo}")
                        )
                        group = None
                else:  # SQLite rolled back the whole group: every member of it fails, now
                    self._abandon(group, TransactionLost("SQLite rolled back the whole transaction"))
                    group = None
                raise
            self.db.execute("RELEASE tx")
            self._tail = (tx._seq, tx._hash, tx._frontier)
            member = group.join()
            group.on_commit += tx._on_commit
        finally:
            if group is not None and (len(group.members) >= MAX_GROUP or (self._waiting == 0 and not linger_s)):
                self._commit(group)  # it releases the lock once the COMMIT is done
            else:
                if group is not None:
                    # Others are queued, or this one may linger: leave the COMMIT to a flusher
                    # (queued behind them, or at the linger's end), so the group commits even
                    # if every one of them is cancelled while waiting.
                    self._flush_within(0 if self._waiting else linger_s)
                self._lock.release()
        if member is not None:
            await member  # raises if the group's COMMIT failed

    def _flush_within(self, delay_s: float) -> None:
        """Make sure the open group is committed within `delay_s`."""
        deadline = asyncio.get_running_loop().time() + delay_s
        if self._flusher is None:
            self._flush_at = deadline
            self._flusher = asyncio.create_task(self._flush())
        elif deadline < self._flush_at:
            self._flush_at = deadline
            self._hurry.set()

    async def _flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            while (wait := self._flush_at - loop.time()) > 0:
                self._hurry.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._hurry.wait()
            await self._acquire()
            if self._group is not None:
                self._commit(self._group)  # it releases the lock once the COMMIT is done
            else:
                self._lock.release()
        finally:
            self._flusher = None

    async def _acquire(self) -> None:
        """The writer lock, counted while queued: a queued writer keeps the group open."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1

    def _commit(self, group: _Group) -> None:
        """Commit the open group, one fsync for all its transactions. Called under the lock;
        `_finish` releases it once the COMMIT is done: here, or when its thread ends."""
        self._group = None
        seq, chain, frontier = self._tail
        try:
            if not self.db.in_transaction:  # nothing to commit, and nothing may be written outside one
                raise TransactionLost("SQLite rolled back the whole transaction before its COMMIT")
            if self._head_due(seq):
                self._store_head(frontier)
            if self._fsync_s >= INLINE_COMMIT_S or time.perf_counter() - self._committed_at < BUSY_GAP_S:
                self._commit_in_thread(group, seq, chain, frontier)
                return
            # A lone COMMIT, and the disk has been answering fsync faster than a thread hop costs.
            started = time.perf_counter()
            self.db.execute("COMMIT")
            self._fsync_s = time.perf_counter() - started
        except Exception as exc:
            self._finish(group, seq, chain, frontier, exc)
        else:
            self._finish(group, seq, chain, frontier, None)

    def _head_due(self, seq: int) -> bool:
        """Whether the COMMIT that takes the log to `seq` entries also stores the frontier."""
        return seq - self._head_stored >= HEAD_EVERY

    def _store_head(self, frontier: CompactRange) -> None:
        """Write the frontier's stored copy (in the open transaction, or as one of its own)."""
        self.db.execute(
            "INSERT INTO audit_head(id, seq, frontier) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, frontier = excluded.frontier",
            (frontier.size, frontier.to_bytes()),
        )

    def _commit_in_thread(self, group: _Group, seq: int, chain: bytes, frontier: CompactRange) -> None:
        """COMMIT in the store's own thread, so a slow disk never stalls the loop. Its end is
        one callback on the loop, which finishes the group and hands the lock on: the next
        group's statements wait one turn of the loop for it, not a chain of task wake-ups."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def commit() -> None:
            started = time.perf_counter()
            try:
                self.db.execute("COMMIT")
                error: Exception | None = None
            except Exception as exc:
                error = exc
            loop.call_soon_threadsafe(committed, time.perf_counter() - started, error)

        def committed(took_s: float, error: Exception | None) -> None:
            self._fsync_s = took_s  # timed to decide where the next one runs
            self._committing = None
            done.set_result(None)
            self._finish(group, seq, chain, frontier, error)

        self._committer.submit(commit)
        self._committing = done  # close() waits for it: the connection must outlive the COMMIT

    def _finish(self, group: _Group, seq: int, chain: bytes, frontier: CompactRange, error: Exception | None) -> None:
        """The group's COMMIT is done: publish it, or roll it back and fail each member; then
        hand the writer lock on."""
        self._committed_at = time.perf_counter()
        try:
            if error is None:
                self.erasures_committed = self.erasures  # none is written while the lock is held for this
                self._published(group, seq, chain, frontier)
            else:
                self._failed(group, error)
        finally:
            self._lock.release()

    def _failed(self, group: _Group, error: Exception) -> None:
        """The group's COMMIT failed: it is rolled back, and each member raises `error`."""
        log.error("store.commit_failed", error=type(error).__name__)
        self.writability.failed(error)
        self._roll_back(group, error)

    def _roll_back(self, group: _Group, error: Exception) -> None:
        """Roll the open group back as a whole: each of its transactions raises `error`."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the next transaction tries again; the members must hear now
            log.error("store.rollback_failed", error=type(exc).__name__)
        self._abandon(group, error)

    def _abandon(self, group: _Group, error: Exception) -> None:
        """The open group is rolled back: each of its transactions raises `error`, and the
        next starts afresh from the committed head."""
        if self._group is group:
            self._group = None
        self._tail = (self._head_seq, self._head_hash, self.frontier)
        group.failed(error)

    def next_commit(self) -> asyncio.Event:
        """Set once the next transaction commits: to wait for committed data to change
        without polling it (take it before reading, then wait on it if the read falls short)."""
        if self._next_commit is None:
            self._next_commit = asyncio.Event()
        return self._next_commit

    def _published(self, group: _Group, seq: int, chain: bytes, frontier: CompactRange) -> None:
        group.committed()
        if self._next_commit is not None:
            self._next_commit.set()
            self._next_commit = None
        if seq > self._head_seq:
            self.writability.succeeded()  # it appended to the log: the store took new data
        if self._head_due(seq):
            self._head_stored = seq
        if seq != self._head_seq:
            self._head_seq, self._head_hash, self.frontier = seq, chain, frontier
            if seq >= self.wake_at:
                self.appended.set()
        for callback in group.on_commit:
            try:
                callback()
            except Exception:  # committed is committed: a failing observer must not undo that
                log.exception("store.on_commit_failed")

    def lookup(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """One row of committed data, read on the loop: only for indexed point look-ups."""
        if self._quick is None:
            self._quick = _read_only(self.path)
        return self._quick.execute(sql, tuple(params)).fetchone()

    async def audit_leaves(self, after: int, upto: int) -> list[bytes]:
        """The Merkle leaf hashes of committed audit entries after..upto (by seq): from
        memory if all were appended since the store opened and are not yet forgotten,
        otherwise read and hashed in a thread."""
        if upto <= self._head_seq and (recent := self.recent_leaves.between(after, upto)) is not None:
            return recent

        def read() -> list[bytes]:
            with closing(_read_only(self.path)) as db:
                return list(_leaves(db, after, upto))

        return await asyncio.to_thread(read)

    async def audit_range(self, size: int) -> CompactRange:
        """The compact range of the first `size` committed audit entries, built in a thread
        without holding the entries (a long log's prefix, read once)."""

        def read() -> CompactRange:
            frontier = CompactRange()
            with closing(_read_only(self.path)) as db:
                for leaf in _leaves(db, 0, size):
                    frontier.append(leaf)
            return frontier

        return await asyncio.to_thread(read)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """A read of committed data only, as of when it runs.

        It runs to its end in one job of the reader's thread. SQLite keeps a connection's
        read snapshot while any of its statements is open, so a statement left open across
        awaits would pin the snapshot for the reads queued behind it, and they would miss
        commits that finished before they began.
        """
        return list(await self.reader.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """The first row of a read of committed data (for queries of one row), or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
