"""Content keys: one HPKE encapsulation for many messages to one recipient key.

An HPKE seal costs about 70 µs here and an open about 40, nearly all of it the
X25519 (or ML-KEM) key encapsulation; AES-GCM over a 4 KB message costs under
1 µs. So the sender draws a random content key, seals it to the recipient's key
once with HPKE (single-shot, the directory's suite, its `info` naming sender,
recipient and key id), and encrypts each message under it with the suite's AEAD:
the nonce is the message's number under the key and the `aad` is the message's
label and routing header. The sealed key travels in every envelope, so each
opens alone, in any order, however often it is sent again; the recipient keeps
the keys it has opened in a bounded cache, so it opens each once.

A content key lives only in memory, for at most KEY_MESSAGES messages or
KEY_AGE_MS, and a restarted sender draws a new one: no key and nonce are ever
used together twice. Stored envelopes are sent again as they are, never
re-encrypted.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_LABEL = b"linkage/v1/content-key\x00"
KEY_MESSAGES = 65_536  # messages under one content key at most
KEY_AGE_MS = 60_000  # and for at most this long
OPENED_KEYS = 1024  # content keys a recipient keeps opened (each about 200 bytes)

PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


def key_info(sender_node: str, recipient_node: str, recipient_key_id: str) -> bytes:
    """HPKE `info` for a sealed content key: it opens only as this pair's, under this key."""
    return b"\x00".join((KEY_LABEL + sender_node.encode(), recipient_node.encode(), recipient_key_id.encode()))


def nonce(seq: int) -> bytes:
    return struct.pack(">IQ", 0, seq)


@dataclass
class _Current:
    aead: AESGCM
    sealed: bytes
    expires_at_ms: int
    used: int = 0


@dataclass(frozen=True)
class Encrypted:
    sealed_key: bytes
    seq: int
    ciphertext: bytes


class ContentKeys:
    """The sender's current content key for each recipient key it seals to."""

    def __init__(self) -> None:
        self._current: dict[tuple[int, str, str, bytes], _Current] = {}

    def encrypt(
        self,
        suite: hpke.Suite,
        key_bytes: int,
        recipient_public: Callable[[], PublicKey],
        identity: tuple[int, str, str, bytes],
        info: bytes,
        plaintext: bytes,
        aad: bytes,
        now_ms: int,
    ) -> Encrypted:
        """`plaintext` under the current content key for `identity` (suite, recipient, key id
        and public key bytes), drawing and sealing a new one when there is none or it is spent."""
        current = self._current.get(identity)
        if current is None or current.used >= KEY_MESSAGES or now_ms >= current.expires_at_ms:
            # Keys spent or out of date (a recipient's rotated key) are dropped as new ones are drawn.
            self._current = {k: c for k, c in self._current.items() if now_ms < c.expires_at_ms}
            key = os.urandom(key_bytes)
            current = _Current(AESGCM(key), suite.encrypt(key, recipient_public(), info=info), now_ms + KEY_AGE_MS)
            self._current[identity] = current
        seq = current.used
        current.used += 1
        return Encrypted(current.sealed, seq, current.aead.encrypt(nonce(seq), plaintext, aad))


class OpenedKeys:
    """The content keys a recipient has opened, most recently used last (bounded)."""

    def __init__(self, capacity: int = OPENED_KEYS) -> None:
        self.capacity = capacity
        self._opened: OrderedDict[tuple[int, bytes, bytes], AESGCM] = OrderedDict()

    def decrypt(
        self,
        suite: hpke.Suite,
        suite_id: int,
        key_bytes: int,
        private: Callable[[], PrivateKey],
        info: bytes,
        encrypted: Encrypted,
        aad: bytes,
    ) -> bytes:
        """The plaintext, or `InvalidTag` / `ValueError` when it does not open."""
        slot = (suite_id, info, encrypted.sealed_key)
        aead = self._opened.get(slot)
        if aead is not None:
            self._opened.move_to_end(slot)
            return aead.decrypt(nonce(encrypted.seq), encrypted.ciphertext, aad)
        key = suite.decrypt(encrypted.sealed_key, private(), info=info)
        if len(key) != key_bytes:
            raise ValueError("content key of the wrong length")
        aead = AESGCM(key)
        # Kept only once its message opens: a sealed key copied onto garbage caches nothing.
        plaintext = aead.decrypt(nonce(encrypted.seq), encrypted.ciphertext, aad)
        self._opened[slot] = aead
        if len(self._opened) > self.capacity:
            self._opened.popitem(last=False)
        return plaintext
