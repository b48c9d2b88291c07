"""A node's message keys: Ed25519 for signing, X25519 for HPKE sealing.

Private keys are stored as unencrypted PKCS#8 PEM files readable only by the
owner (mode 0600); protect the node's key directory as you would a TLS key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519


def write_private_pem(path: Path, key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def load_ed25519(path: Path) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_x25519(path: Path) -> x25519.X25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ValueError(f"{path} is not an X25519 private key")
    return key


def raw_public(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_public_pq(key: mlkem.MLKEM768PrivateKey | mldsa.MLDSA65PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_seed(path: Path, seed: bytes) -> None:
    path.write_bytes(seed)
    path.chmod(0o600)


@dataclass(frozen=True)
class MessageKeys:
    """The keys one node uses for messages, loaded once at start-up. The ML-KEM and
    ML-DSA keys exist when the federation chose the hybrid post-quantum suite."""

    key_id: str
    signing: ed25519.Ed25519PrivateKey
    hpke: x25519.X25519PrivateKey
    mlkem: mlkem.MLKEM768PrivateKey | None = None
    mldsa: mldsa.MLDSA65PrivateKey | None = None
    previous: tuple[MessageKeys, ...] = ()  # earlier generations, kept to open what was sealed to them

    def for_id(self, key_id: str) -> MessageKeys | None:
        """This generation or an earlier one still held."""
        if key_id == self.key_id:
            return self
        return next((k for k in self.previous if k.key_id == key_id), None)

    @classmethod
    def generate(cls, key_id: str, post_quantum: bool = False) -> MessageKeys:
        return cls(
            key_id,
            ed25519.Ed25519PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
            mlkem.MLKEM768PrivateKey.generate() if post_quantum else None,
            mldsa.MLDSA65PrivateKey.generate() if post_quantum else None,
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private_pem(directory / "signing.key", self.signing)
        write_private_pem(directory / "hpke.key", self.hpke)
        if self.mlkem is not None and self.mldsa is not None:
            _write_seed(directory / "mlkem.seed", self.mlkem.private_bytes_raw())
            _write_seed(directory / "mldsa.seed", self.mldsa.private_bytes_raw())
        (directory / "key_id").write_text(self.key_id + "\n")

    @classmethod
    def load(cls, directory: Path) -> MessageKeys:
        """The current generation in `directory`, and the earlier ones under `previous/`."""
        pq = (directory / "mlkem.seed").exists()
        older = directory / "previous"
        previous = tuple(cls.load(d) for d in sorted(older.iterdir())) if older.is_dir() else ()
        return cls(
            key_id=(directory / "key_id").read_text().strip(),
            signing=load_ed25519(directory / "signing.key"),
            hpke=load_x25519(directory / "hpke.key"),
            mlkem=mlkem.MLKEM768PrivateKey.from_seed_bytes((directory / "mlkem.seed").read_bytes()) if pq else None,
            mldsa=mldsa.MLDSA65PrivateKey.from_seed_bytes((directory / "mldsa.seed").read_bytes()) if pq else None,
            previous=previous,
        )
