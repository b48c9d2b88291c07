"""Identifiers: UUIDv7 message ids (time-ordered, RFC 9562) and their checks."""

from __future__ import annotations

import os
import re
import threading

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NODE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


_RANDOM_BITS = 74
_last = (-1, 0)  # the last id's millisecond and random part
_lock = threading.Lock()


def uuid7(now_ms: int) -> str:
    """A UUIDv7 string: 48-bit millisecond timestamp, then 74 random bits. Ids made in
    one millisecond by this process still ascend (RFC 9562 6.2, monotonic random): a
    recipient orders a sender's versions of a summary by them, not by their arrival."""
    global _last
    ms = now_ms & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    with _lock:
        if ms == _last[0] and (bumped := _last[1] + 1 + (rand >> 48)) < 1 << _RANDOM_BITS:
            rand = bumped
        else:
            rand &= (1 << _RANDOM_BITS) - 1
        _last = (ms, rand)
    value = ms << 80
    value |= 0x7 << 76
    value |= (rand >> 62) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # formatted here: uuid.UUID validates and formats at several times the cost
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuid7(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def is_node_id(text: str) -> bool:
    """Node ids are short lowercase slugs; they appear in SPIFFE ids and paths."""
    return bool(NODE_ID_RE.match(text))


def is_peer(text: str, me: str) -> bool:
    """Whether a node id the gateway names could be another agency: in the federation's form,
    and not this node's own (a gateway that is not what it should be may name either)."""
    return text != me and is_node_id(text)


def recordable(message_id: str, node_id: str) -> tuple[str, str, dict[str, bool]]:
    """A message id and a node id, from a party not yet trusted, as a log may record them:
    each only in the form the federation gives it (a UUIDv7, a node id), else left out and
    flagged, so that nobody writes what they like, or as much as they like, into a log."""
    flags = {}
    if message_id and not is_uuid7(message_id):
        message_id, flags["message_id_malformed"] = "", True
    if node_id and not is_node_id(node_id):
        node_id, flags["counterpart_malformed"] = "", True
    return message_id, node_id, flags
