"""Identifiers: UUIDv7 message ids (time-ordered, RFC 9562) and their checks."""

from __future__ import annotations

import os
import re

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NODE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{1,62}$")


def uuid7(now_ms: int) -> str:
    """A UUIDv7 string: 48-bit millisecond timestamp, then 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # formatted here: uuid.UUID validates and formats at several times the cost
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuid7(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def is_node_id(text: str) -> bool:
    """Node ids are short lowercase slugs; they appear in SPIFFE ids and paths."""
    return bool(NODE_ID_RE.match(text))
