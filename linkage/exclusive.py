"""One process at a time on a store. The node's and the gateway's stores keep the head of
their hash chains (the audit log, the metadata log) in memory, so a second process writing
the same file would fork the chain, and a second node would send the same outbox twice."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class InUse(OSError):
    """The store is open in another process (or by another server in this one)."""


class Exclusive:
    """An advisory lock on `<store>.lock`, held while the store is open. The OS lets it go
    when its holder exits, however it exits, so a crash never leaves it held."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, store: Path) -> Exclusive:
        fd = os.open(store.with_name(store.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InUse(
                f"{store} is in use by process {holder}: stop it before starting another on the same store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = -1
