"""Ed25519 verification through libsodium (PyNaCl) for the signatures checked per message:
messages, receipts and the audit checkpoints they carry.

The signatures are the same bytes `cryptography` makes and checks; libsodium verifies
them in about half the time on this class of machine (performance.md: 120 µs against
239 µs for a 2 KB message), and it is the stricter verifier: it refuses small-order
keys and non-canonical encodings. Signing stays with `cryptography`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from nacl.bindings import crypto_sign_BYTES, crypto_sign_open, crypto_sign_PUBLICKEYBYTES
from nacl.exceptions import BadSignatureError, CryptoError


def verify(public_key: bytes, signature: bytes, data: bytes) -> None:
    """Raise InvalidSignature unless `signature` is `public_key`'s Ed25519 signature over `data`."""
    if len(public_key) != crypto_sign_PUBLICKEYBYTES or len(signature) != crypto_sign_BYTES:
        raise InvalidSignature()
    try:
        crypto_sign_open(signature + data, public_key)
    except (BadSignatureError, CryptoError, ValueError):
        raise InvalidSignature() from None
