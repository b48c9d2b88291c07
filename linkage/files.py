"""Files written whole or not at all, for keys, certificates, directory entries,
configurations and exports: a crash leaves either the old file or the new one, never a part.

Each is written to a temporary file beside its target, flushed to disk, renamed over
the target, and the rename flushed too. A private file is created with mode 0600, so
its key is never readable by others, not even for the moment before a chmod.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

PRIVATE = 0o600
PUBLIC = 0o644  # less what the process's umask takes away


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    with _whole(path, mode) as fd, os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def written_whole(path: Path, mode: int = PRIVATE) -> Iterator[TextIO]:
    """A text file streamed into place whole or not at all, private by default: an export
    of a million audit entries cut short never passes for all of them, and what it holds
    about people is nobody else's to read."""
    with _whole(path, mode) as fd, os.fdopen(fd, "w", newline="") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def written_whole_bytes(path: Path, mode: int = PRIVATE) -> Iterator[io.BufferedWriter]:
    """`written_whole` for bytes: a backup, say."""
    with _whole(path, mode) as fd, os.fdopen(fd, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def _whole(path: Path, mode: int) -> Iterator[int]:
    """A new file beside `path` to write, renamed over it (and the rename made durable) only
    if the writing finishes; removed if it does not."""
    if path.is_dir():  # said before any writing, not by the rename at its end
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; O_EXCL then refuses anything planted in its place
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        yield fd
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, PRIVATE)


def fsync_dir(directory: Path) -> None:
    """Make the renames and new names in `directory` durable."""
    _fsync(directory, os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """Make a file written by another hand (an archive's extraction, say) durable."""
    _fsync(path, 0)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
