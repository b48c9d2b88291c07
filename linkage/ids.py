"""Identifiers: UUIDv7 message ids (time-ordered, RFC 9562) and their checks."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NODE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


_RANDOM_BITS = 74
_MS_MASK = (1 << 48) - 1


class Ids:
    """UUIDv7 strings (RFC 9562): a 48-bit millisecond timestamp, then 74 random bits, that
    ascend in the order they are made. Within a millisecond by monotonic random (RFC 9562
    6.2); and when the clock is set back (NTP stepping it, a host resumed), by keeping to
    the last id's millisecond until the clock passes it again. A recipient orders a
    sender's messages about a summary by their ids, not by their arrival: a withdrawal
    made after a step back must not look older than the version it withdraws."""

    def __init__(self, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self._randbytes = randbytes  # a seeded one makes a model's steps replay alike
        self._last = (-1, 0)  # the last id's millisecond and random part
        self._lock = threading.Lock()

    def after(self, made: str) -> None:
        """Make every id from now on after `made` (the newest a node's store holds, so that a
        restart with its clock set back does not undo the order). Anything but a UUIDv7 is
        no id of ours to follow: a store is not refused for it."""
        if not is_uuid7(made):
            return
        value = int(made.replace("-", ""), 16)
        ms, rand = value >> 80, ((value >> 64) & 0xFFF) << 62 | value & ((1 << 62) - 1)
        with self._lock:
            self._last = max(self._last, (ms, rand))

    def make(self, now_ms: int) -> str:
        ms = now_ms & _MS_MASK
        rand = int.from_bytes(self._randbytes(10), "big")
        with self._lock:
            last_ms, last_rand = self._last
            if ms > last_ms:
                rand &= (1 << _RANDOM_BITS) - 1
            elif (bumped := last_rand + 1 + (rand >> 48)) < 1 << _RANDOM_BITS:
                ms, rand = last_ms, bumped
            else:  # the last millisecond's ids used up: borrow the next one
                ms, rand = last_ms + 1, rand & ((1 << _RANDOM_BITS) - 1)
            self._last = (ms, rand)
        value = ms << 80
        value |= 0x7 << 76
        value |= (rand >> 62) << 64
        value |= 0b10 << 62
        value |= rand & ((1 << 62) - 1)
        h = f"{value:032x}"  # formatted here: uuid.UUID validates and formats at several times the cost
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The process's own, for what it makes outside a node (a backup, the gateway's log).
uuid7 = Ids().make


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
