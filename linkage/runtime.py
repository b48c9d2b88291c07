"""Process-level settings for a long-running node or gateway."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """After start-up: move everything allocated so far (modules, keys, the directory, the
    subscription index) out of the collector's sight. A full collection then walks only
    what serving allocates, instead of pausing the loop for milliseconds over objects
    that live as long as the process."""
    gc.collect()
    gc.freeze()
