"""Whether a store can be written. A full disk, a failing one, a read-only or a damaged
file: SQLite then refuses every write, and the process fails closed, since nothing may be
shared, received or relayed that it cannot record. A store notices where a write fails
(SQLite then rolls the whole transaction back), and clears it with the next COMMIT that
appends to its log (a node's audit log, the gateway's metadata log): new data, not a row
rewritten in place, which a full disk may still take. Meanwhile it reports NOT_SERVING and
tells each caller what to do."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

# SQLite's primary result codes (the low byte of its extended ones) for a store that cannot
# take a write. Anything else a statement raises is a defect in the call, not the disk.
UNWRITABLE = {
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    26: "SQLITE_NOTADB",
}


class StoreUnusable(OSError):
    """A store this process cannot open as it stands: said to the person starting it in one
    line (the command line prints an OSError so), with what to do, not as a traceback."""


@contextmanager
def opening(path: Path) -> Iterator[None]:
    """Opening the store at `path`: SQLite's refusal to read it as a database (damaged, or not
    a store at all) is a StoreUnusable that says what to do."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if UNWRITABLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise
        raise StoreUnusable(
            f"{path} is not a store Linkage can read ({exc}): put back its last backup "
            "(`linkage backup restore`), keeping this file aside for whoever looks into it"
        ) from exc


def unwritable(exc: BaseException | None) -> str | None:
    """SQLite's name for why the store could not be written, if `exc` or what caused it says so."""
    for _ in range(8):  # a chain of causes is short; never follow one round for ever
        if exc is None:
            return None
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(exc, sqlite3.Error) and isinstance(code, int) and code & 0xFF in UNWRITABLE:
            return UNWRITABLE[code & 0xFF]
        exc = exc.__cause__ or exc.__context__
    return None


def log_failure(log: FilteringBoundLogger, event: str, exc: BaseException, **fields: object) -> None:
    """Log a failure caught in an except block: with its traceback, unless the store refused a
    write for want of a writable disk. That one is expected, once for each thing that tries to
    write, until the disk is mended, and the store has said so already (`store.unwritable`)."""
    if (error := unwritable(exc)) is not None:
        log.warning(event, error=error, **fields)
    else:
        log.exception(event, **fields)


class Writability:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log  # the store's own: its events say whose store it is
        self.error: str | None = None  # why the last write failed, until one succeeds
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def on_change_run(self, report: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `report` on the event loop at each change (a server's health, say)."""
        running: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only a weak reference

        def changed() -> None:
            task = asyncio.get_running_loop().create_task(report())
            running.add(task)
            task.add_done_callback(running.discard)

        self.on_change(changed)

    def failed(self, exc: BaseException) -> None:
        """Note a failed write: it says something only if it failed for want of a writable store."""
        error = unwritable(exc)
        if error is not None and error != self.error:
            self.error = error
            self.log.error("store.unwritable", error=error)
            self._changed()

    def succeeded(self) -> None:
        if self.error is not None:
            self.error = None
            self.log.info("store.writable")
            self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
