"""Requests no client should send, built from the contracts themselves: any message of the
API, filled at random or a valid one with a few fields made wrong, for the calls' tests of
what a live server answers. Seeded, so a failure comes back the same."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

# Values chosen for where code goes wrong: empty, blank, huge, control and bidi characters,
# paths, numbers at their type's ends.
_TEXT = ["", " ", "\t\n", "x" * 5_000, "\x00", "a\u202eb", "\U0001f642", "../../x", "NaN", "-1", "é" * 300, "ŵ" * 3_000]
_INTS = {
    FieldDescriptor.TYPE_INT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_SINT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_SFIXED32: [0, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_INT64: [0, 1, -1, 2**63 - 1, -(2**63), 1_800_000_000_000],
    FieldDescriptor.TYPE_SINT64: [0, -1, 2**63 - 1, -(2**63)],
    FieldDescriptor.TYPE_SFIXED64: [0, -1, 2**63 - 1, -(2**63)],
    FieldDescriptor.TYPE_UINT32: [0, 1, 2**32 - 1, 500, 501],
    FieldDescriptor.TYPE_FIXED32: [0, 1, 2**32 - 1],
    FieldDescriptor.TYPE_UINT64: [0, 1, 2**64 - 1, 2**63],
    FieldDescriptor.TYPE_FIXED64: [0, 1, 2**64 - 1],
}
_FLOATS = [0.0, -1.0, math.nan, math.inf, -math.inf, 1e308]
MAX_DEPTH = 4
# A field's descriptor: upb's class or the pure-Python one, which mypy tells apart.
Field = Any


@dataclass
class Garbler:
    """`known`: values worth trying in any text or bytes field (real ids, tokens and codes from
    the running federation), so that a wrong request also reaches past the first look-up."""

    rng: random.Random
    known_text: list[str] = field(default_factory=list)
    known_bytes: list[bytes] = field(default_factory=list)

    def message(self, cls: type[Message], depth: int = 0) -> Message:
        """A message of `cls` with a random choice of its fields set to random values."""
        built = cls()
        for fd in cls.DESCRIPTOR.fields:
            if self.rng.random() < 0.5:
                self._fill(built, fd, depth)
        return built

    def spoil(self, valid: Message, changes: int, only: frozenset[str] = frozenset()) -> Message:
        """A copy of `valid` with `changes` fields anywhere in it made wrong or cleared (if
        `only` names some, those of its own fields and anything in them)."""
        spoiled = type(valid)()
        spoiled.CopyFrom(valid)
        for _ in range(changes):
            targets = list(_fields(spoiled, only))
            if not targets:
                break
            holder, fd = self.rng.choice(targets)
            if self.rng.random() < 0.25:
                holder.ClearField(fd.name)
            else:
                holder.ClearField(fd.name)
                self._fill(holder, fd, MAX_DEPTH - 1)
        return spoiled

    def _fill(self, holder: Message, fd: Field, depth: int) -> None:
        if fd.is_repeated:
            count = self.rng.choice([0, 1, 2, 3, 3, 300]) if depth < MAX_DEPTH else 0
            target = getattr(holder, fd.name)
            for _ in range(count):
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    if fd.message_type.GetOptions().map_entry:
                        break  # no map fields in these contracts; not worth the code
                    target.add().CopyFrom(self.message(GetMessageClass(fd.message_type), depth + 1))
                else:
                    target.append(self._scalar(fd))
            return
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < MAX_DEPTH:
                getattr(holder, fd.name).CopyFrom(self.message(GetMessageClass(fd.message_type), depth + 1))
            return
        setattr(holder, fd.name, self._scalar(fd))

    def _scalar(self, fd: Field) -> Any:
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            if self.known_text and self.rng.random() < 0.5:
                return self.rng.choice(self.known_text)
            return self.rng.choice(_TEXT)
        if kind == FieldDescriptor.TYPE_BYTES:
            if self.known_bytes and self.rng.random() < 0.5:
                return self.rng.choice(self.known_bytes)
            return self.rng.choice([b"", b"\x00", self.rng.randbytes(32), self.rng.randbytes(7), b"\xff" * 20_000])
        if kind == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self.rng.choice(_FLOATS)
        if kind == FieldDescriptor.TYPE_ENUM:
            numbers = [v.number for v in fd.enum_type.values]
            return self.rng.choice([*numbers, *numbers, -1, max(numbers) + 1, 2**31 - 1])
        return self.rng.choice(_INTS[kind])


def _fields(message: Message, only: frozenset[str] = frozenset()) -> Sequence[tuple[Message, Field]]:
    """Every (holder, field) in `message`, through the submessages it has set; if `only`
    names some of its own fields, those and what is in them."""
    found: list[tuple[Message, Field]] = []
    stack = [message]
    while stack:
        holder = stack.pop()
        for fd in holder.DESCRIPTOR.fields:
            if only and holder is message and fd.name not in only:
                continue
            found.append((holder, fd))
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            value = getattr(holder, fd.name)
            if fd.is_repeated:
                stack.extend(value)
            elif holder.HasField(fd.name):
                stack.append(value)
    return found
