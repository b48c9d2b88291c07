"""A file system that loses what was not synced, for power-loss tests (R7), after LazyFS
(dsrhaslab/lazyfs): a FUSE mount over a backing folder that keeps every write in memory
until the file is fsynced, so killing this process (SIGKILL) loses exactly what a power cut
would: each file's writes since its last fsync. Names (create, rename, unlink, mkdir) go to
the backing folder at once, as a journalling file system would keep them.

    python -m tests.lazyfs BACKING MOUNTPOINT

Reading MOUNTPOINT/.lazyfs-pending answers how many bytes each file holds unsynced, as
JSON, so a test can tell a crash that lost something from one that lost nothing."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]

PAGE = 4096
PENDING = "/.lazyfs-pending"


@dataclass
class Unsynced:
    """One file's writes since its last fsync: whole pages, its size as written, and the
    smallest it was cut to (past that, what is on disk is gone unless written again)."""

    size: int
    cut_to: int
    pages: dict[int, bytearray] = field(default_factory=dict)

    @classmethod
    def of(cls, fd: int) -> Unsynced:
        size = os.fstat(fd).st_size
        return cls(size, size)


class LazyFs(Operations):  # type: ignore[misc]
    use_ns = True  # times in nanoseconds, as os.utime takes them

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self._guard = threading.Lock()
        self.unsynced: dict[int, Unsynced] = {}  # by inode, so a rename keeps what is pending
        self.names: dict[int, str] = {}  # an inode's last name, for the report

    def _real(self, path: str) -> str:
        return str(self.backing) + path

    def _inode(self, fd: int) -> int:
        return os.fstat(fd).st_ino

    # Names: passed through at once.
    def access(self, path: str, amode: int) -> None:
        if path != PENDING and not os.access(self._real(path), amode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == PENDING:
            return {"st_mode": 0o100444, "st_nlink": 1, "st_size": len(self._report()), "st_uid": 0, "st_gid": 0}
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        attrs = {
            k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_uid")
        }
        with self._guard:
            pending = self.unsynced.get(st.st_ino)
        attrs["st_size"] = pending.size if pending else st.st_size
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def init(self, path: str) -> None:
        print("mounted", flush=True)  # for whoever started it: the mount serves from now

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def unlink(self, path: str) -> None:
        st = os.lstat(self._real(path))
        os.unlink(self._real(path))
        if st.st_nlink == 1:  # its last name: nothing of it is left to sync
            with self._guard:
                self.unsynced.pop(st.st_ino, None)

    def rename(self, old: str, new: str) -> None:
        os.rename(self._real(old), self._real(new))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._real(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if times is None:
            os.utime(self._real(path))
        else:
            os.utime(self._real(path), ns=times)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {
            k: getattr(st, k)
            for k in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }

    # Data: kept in memory until fsync.
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)
        with self._guard:
            self.names[self._inode(fd)] = path
        return fd

    def mknod(self, path: str, mode: int, dev: int) -> None:
        os.mknod(self._real(path), mode, dev)  # a node's API socket

    def open(self, path: str, flags: int) -> int:
        if path == PENDING:
            return 0
        fd = os.open(self._real(path), os.O_RDWR if os.access(self._real(path), os.W_OK) else os.O_RDONLY)
        if flags & os.O_TRUNC:
            self._resize(fd, 0)
        with self._guard:
            self.names[self._inode(fd)] = path
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == PENDING:
            return self._report()[offset : offset + size]
        with self._guard:
            pending = self.unsynced.get(self._inode(fh))
            end = min(offset + size, pending.size if pending else os.fstat(fh).st_size)
            out = bytearray()
            position = offset
            while position < end:
                page, at = divmod(position, PAGE)
                data = self._page(fh, pending, page)
                take = min(PAGE - at, end - position)
                out += data[at : at + take]
                position += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._guard:
            inode = self._inode(fh)
            pending = self.unsynced.get(inode) or Unsynced.of(fh)
            position, written = offset, 0
            while written < len(data):
                page, at = divmod(position, PAGE)
                buffer = self._page(fh, pending, page)
                take = min(PAGE - at, len(data) - written)
                buffer[at : at + take] = data[written : written + take]
                pending.pages[page] = buffer
                position += take
                written += take
            pending.size = max(pending.size, offset + len(data))
            self.unsynced[inode] = pending
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        fd = fh if fh is not None else os.open(self._real(path), os.O_RDWR)
        try:
            self._resize(fd, length)
        finally:
            if fh is None:
                os.close(fd)

    def _resize(self, fd: int, length: int) -> None:
        with self._guard:
            inode = self._inode(fd)
            pending = self.unsynced.get(inode) or Unsynced.of(fd)
            last, at = divmod(length, PAGE)
            if at:
                buffer = self._page(fd, pending, last)
                buffer[at:] = bytes(PAGE - at)
                pending.pages[last] = buffer
            pending.pages = {p: b for p, b in pending.pages.items() if p * PAGE < length}
            pending.size, pending.cut_to = length, min(pending.cut_to, length)
            self.unsynced[inode] = pending

    def _page(self, fd: int, pending: Unsynced | None, page: int) -> bytearray:
        """A page as the program sees it: as written since the last fsync, or from disk."""
        if pending is not None and page in pending.pages:
            return bytearray(pending.pages[page])
        on_disk = bytearray(os.pread(fd, PAGE, page * PAGE))
        if pending is not None and pending.cut_to < (page + 1) * PAGE:  # cut since the last fsync
            on_disk[max(0, pending.cut_to - page * PAGE) :] = b""
        return on_disk + bytes(PAGE - len(on_disk))

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        with self._guard:
            pending = self.unsynced.pop(self._inode(fh), None)
            if pending is not None:
                os.ftruncate(fh, pending.cut_to)  # what was cut stays cut where no page is written again
                for page, buffer in sorted(pending.pages.items()):
                    keep = max(0, min(PAGE, pending.size - page * PAGE))
                    os.pwrite(fh, bytes(buffer[:keep]), page * PAGE)
                os.ftruncate(fh, pending.size)
            os.fsync(fh)

    def flush(self, path: str, fh: int) -> None:
        return None  # close(2) promises nothing about durability

    def release(self, path: str, fh: int) -> None:
        if path != PENDING:
            os.close(fh)

    def _report(self) -> bytes:
        with self._guard:
            pending = {
                self.names.get(inode, str(inode)): sum(len(b) for b in u.pages.values())
                for inode, u in self.unsynced.items()
            }
        return json.dumps(pending, sort_keys=True).encode()


def main(backing: str, mountpoint: str) -> None:
    FUSE(LazyFs(Path(backing)), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
