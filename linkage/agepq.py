"""age's post-quantum recipient type, `mlkem768x25519` (c2sp.org/age, age 1.3 and later), for
backups: a copy that leaves the building may be kept, and harvested, for decades.

An identity is a 32-byte seed, written `AGE-SECRET-KEY-PQ-1...` as age-keygen -pq writes it; its
recipient, `age1pq1...`, is the 1,216-byte X-Wing public key (ML-KEM-768 and X25519) the seed
expands to. A file key is sealed to it with HPKE (RFC 9180) base mode: KEM MLKEM768-X25519
(X-Wing), HKDF-SHA256, ChaCha20-Poly1305, age's own `info`, no aad. Nothing here is new
cryptography: `cryptography` does the KEM and HPKE; this module only names keys and stanzas as
age does, so the age tools can open the backups too. pyrage has no such recipient of its own, so
it reaches this one as age's plugin `pq` (linkage/ageplugin.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

STANZA = "mlkem768x25519"
RECIPIENT_HRP = "age1pq"
IDENTITY_HRP = "AGE-SECRET-KEY-PQ-"
PLUGIN = "pq"  # age's plugin of this name speaks for the same keys (age-plugin-pq)
PLUGIN_IDENTITY_HRP = "AGE-PLUGIN-PQ-"
LABEL = "postquantum"  # a file sealed to it must not also be sealed to a classic key
_INFO = b"age-encryption.org/mlkem768x25519"
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
SEED_BYTES, PUBLIC_BYTES, ENC_BYTES, FILE_KEY_BYTES = 32, 1216, 1120, 16
BODY_BYTES = FILE_KEY_BYTES + 16  # the file key and its tag


class NotAKey(ValueError):
    """Text that is not the key it should be."""


@dataclass(frozen=True)
class Identity:
    seed: bytes = field(repr=False)  # the private key: never in a traceback or a log

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_BYTES))

    @classmethod
    def parse(cls, text: str) -> Identity:
        """`AGE-SECRET-KEY-PQ-1...`, or the same seed as the plugin's `AGE-PLUGIN-PQ-1...`."""
        hrp, data = bech32_decode(text)
        if hrp.upper() not in (IDENTITY_HRP, PLUGIN_IDENTITY_HRP) or len(data) != SEED_BYTES:
            raise NotAKey("not a post-quantum age identity (AGE-SECRET-KEY-PQ-1...)")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(IDENTITY_HRP, self.seed).upper()

    def as_plugin(self) -> str:
        return bech32_encode(PLUGIN_IDENTITY_HRP, self.seed).upper()

    def _parts(self) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
        # X-Wing's key expansion: 64 bytes of ML-KEM seed (d || z), then the X25519 key.
        expanded = hashlib.shake_256(self.seed).digest(96)
        return (
            mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
            x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
        )

    def _private(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(*self._parts())

    def recipient(self) -> Recipient:
        ml, dh = self._parts()
        return Recipient(ml.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw())

    def unwrap(self, enc: bytes, body: bytes) -> bytes | None:
        """The file key a stanza seals to this identity, or None if it is sealed to another."""
        try:
            return _SUITE.decrypt(enc + body, self._private(), info=_INFO)
        except InvalidTag:  # sealed to another recipient
            return None


@dataclass(frozen=True)
class Recipient:
    public: bytes

    @classmethod
    def parse(cls, text: str) -> Recipient:
        hrp, data = bech32_decode(text)
        if hrp != RECIPIENT_HRP or len(data) != PUBLIC_BYTES:
            raise NotAKey("not a post-quantum age public key (age1pq1...)")
        try:
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:-32])
        except ValueError:
            raise NotAKey("not a post-quantum age public key: its ML-KEM part is not a key") from None
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(RECIPIENT_HRP, self.public)

    def wrap(self, file_key: bytes) -> tuple[bytes, bytes]:
        """A stanza's encapsulated key and body, sealing `file_key` to this recipient."""
        public = hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self.public[:-32]),
            x25519.X25519PublicKey.from_public_bytes(self.public[-32:]),
        )
        sealed = _SUITE.encrypt(file_key, public, info=_INFO)
        return sealed[:ENC_BYTES], sealed[ENC_BYTES:]


def b64encode(data: bytes) -> str:
    """age's base64: standard, unpadded."""
    return base64.b64encode(data).decode().rstrip("=")


def b64decode(text: str) -> bytes:
    """age's base64, refused unless canonical (no padding, no stray bits), as the spec asks."""
    if "=" in text or "\n" in text or "\r" in text:
        raise ValueError("not age's base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not age's base64") from None
    if b64encode(data) != text:
        raise ValueError("not canonical base64")
    return data


# -- Bech32 (BIP 173), without its 90-character limit, which age does not keep ------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, g in enumerate(_GENERATOR):
            check ^= g if (top >> i) & 1 else 0
    return check


def _hrp_values(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], source: int, target: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    top = (1 << target) - 1
    for value in data:
        acc = (acc << source) | value
        bits += source
        while bits >= target:
            bits -= target
            out.append((acc >> bits) & top)
    if pad and bits:
        out.append((acc << (target - bits)) & top)
    elif not pad and (bits >= source or (acc << (target - bits)) & top):
        raise NotAKey("not a key: its Bech32 data does not end on a byte")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    hrp = hrp.lower()
    values = _regroup(data, 8, 5, pad=True)
    check = _polymod(_hrp_values(hrp) + values + [0] * 6) ^ 1
    return hrp + "1" + "".join(_CHARSET[v] for v in values + [(check >> 5 * (5 - i)) & 31 for i in range(6)])


def bech32_decode(text: str) -> tuple[str, bytes]:
    """The human-readable part (lower case) and the data; all of one case, as Bech32 asks."""
    if text != text.lower() and text != text.upper():
        raise NotAKey("not a key: Bech32 is all one case")
    text = text.lower()
    split = text.rfind("1")
    if split < 1 or len(text) - split < 7 or any(c not in _CHARSET for c in text[split + 1 :]):
        raise NotAKey("not a key: not Bech32")
    hrp, values = text[:split], [_CHARSET.index(c) for c in text[split + 1 :]]
    if _polymod(_hrp_values(hrp) + values) != 1:
        raise NotAKey("not a key: its Bech32 checksum is wrong (mistyped, or cut short)")
    return hrp, bytes(_regroup(values[:-6], 5, 8, pad=False))
