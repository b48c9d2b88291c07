"""Stream frames travel in batches when several are waiting: gRPC costs the same per
stream message whatever its size, so frames queued together are written together.
A batch never holds a batch, nor more than MAX_BATCH_FRAMES frames (so that a reader may
take one whole), and stays well under the transport's message limit."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar

from linkage.transport import MAX_MESSAGE_BYTES

MAX_BATCH_FRAMES = 64
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 2


class _Frame(Protocol):
    @property
    def batch(self) -> Any: ...

    def WhichOneof(self, oneof_group: Literal["frame"]) -> str | None: ...

    def ByteSize(self) -> int: ...


F = TypeVar("F", bound=_Frame)


class BatchError(ValueError):
    """A batch Linkage never sends (one inside another, or one of too many frames): refused."""


def fits(batch_bytes: int, batch_frames: int, frame: _Frame) -> bool:
    """Whether `frame` may join a batch that already holds `batch_frames` frames of `batch_bytes`."""
    return batch_frames < MAX_BATCH_FRAMES and batch_bytes + frame.ByteSize() <= MAX_BATCH_BYTES


def unbatch(frame: F) -> list[F]:
    """The frames a received frame stands for: itself, or the members of its batch."""
    if frame.WhichOneof("frame") != "batch":
        return [frame]
    members: list[F] = list(frame.batch.frames)
    if len(members) > MAX_BATCH_FRAMES:
        raise BatchError(f"a batch may hold at most {MAX_BATCH_FRAMES} frames; this one held {len(members):,}")
    if any(f.WhichOneof("frame") == "batch" for f in members):
        raise BatchError("a batch of frames may not contain another batch")
    return members
