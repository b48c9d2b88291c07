"""A process killed in the middle of writing files, simulated step by step: `crash_at(n)`
stops it at its n-th call that opens, creates, renames, links or removes a file or folder, so a
test can cut an operation at each of its steps in turn and check what is left on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

import pytest


class Crash(Exception):
    """The process died here."""


@contextmanager
def crash_at(step: int) -> Iterator[None]:
    """What is on disk after `Crash` is what a process killed at that point would leave
    (each write is flushed to disk before its rename, so a power cut leaves the same)."""
    calls = count(1)

    def dying(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if next(calls) == step:
                raise Crash
            return real(*args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in ("open", "replace", "link", "mkdir", "unlink", "rmdir"):
            patch.setattr(os, name, dying(getattr(os, name)))
        yield


def readable_by_others(keys: Path) -> list[Path]:
    """Files under a bundle's `keys` folder, written whole or in part, that others may read:
    every one holds a secret but `key_id`, which only names a generation."""
    return [
        path
        for path in keys.rglob("*")
        if path.is_file() and not path.name.lstrip(".").startswith("key_id") and path.stat().st_mode & 0o077
    ]
