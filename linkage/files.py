"""Files written whole or not at all, for keys, certificates, directory entries and
configurations: a crash leaves either the old file or the new one, never a part.

Each is written to a temporary file beside its target, flushed to disk, renamed over
the target, and the rename flushed too. A private file is created with mode 0600, so
its key is never readable by others, not even for the moment before a chmod.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644  # less what the process's umask takes away


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; O_EXCL then refuses anything planted in its place
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, PRIVATE)


def fsync_dir(directory: Path) -> None:
    """Make the renames and new names in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
