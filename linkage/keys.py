"""A node's message keys: Ed25519 for signing, X25519 for HPKE sealing.

Private keys are stored as unencrypted PKCS#8 PEM files readable only by the
owner (mode 0600); protect the node's key directory as you would a TLS key.

A rotation writes the new generation whole under `next/` first, then moves it into
place (`finish_rotation`), so a crash at any point leaves keys that load as one
generation, or a staged rotation that running it again completes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from linkage.files import fsync_dir, write_atomic, write_private

KEY_FILES = ("signing.key", "hpke.key", "mlkem.seed", "mldsa.seed")  # a generation, named by its key_id file
STAGED = "next"  # a new generation written whole, not yet in place
PARTIAL = ".partial"  # a folder still being written: discarded, never read


class RotationUnfinished(ValueError):
    """The keys hold a rotation that a crash interrupted."""


def write_private_pem(path: Path, key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)


def _private_key(path: Path) -> object:
    """The unencrypted PEM private key in a file, of whatever kind; None if it holds none."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: one that wants a password
        return None


def load_ed25519(path: Path) -> ed25519.Ed25519PrivateKey:
    key = _private_key(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key (unencrypted PEM)")
    return key


def load_x25519(path: Path) -> x25519.X25519PrivateKey:
    key = _private_key(path)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ValueError(f"{path} is not an X25519 private key (unencrypted PEM)")
    return key


def public_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    """A public key as its file holds it (the directory key's `directory.pub`)."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_public_pq(key: mlkem.MLKEM768PrivateKey | mldsa.MLDSA65PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


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

    def public_halves(self) -> tuple[bytes, bytes, bytes, bytes]:
        """Signing, HPKE, ML-KEM and ML-DSA public keys, raw (b"" for those it has not), as
        the directory's NodeKey holds them."""
        return (
            raw_public(self.signing),
            raw_public(self.hpke),
            raw_public_pq(self.mlkem) if self.mlkem else b"",
            raw_public_pq(self.mldsa) if self.mldsa else b"",
        )

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
            write_private(directory / "mlkem.seed", self.mlkem.private_bytes_raw())
            write_private(directory / "mldsa.seed", self.mldsa.private_bytes_raw())
        write_atomic(directory / "key_id", (self.key_id + "\n").encode())

    def stage(self, directory: Path) -> None:
        """Write this generation whole to `directory/next/`, for `finish_rotation` to put in place."""
        partial = directory / (STAGED + PARTIAL)
        shutil.rmtree(partial, ignore_errors=True)
        self.save(partial)
        os.replace(partial, directory / STAGED)
        fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path) -> MessageKeys:
        """The current generation in `directory`, and the earlier ones under `previous/`."""
        if (directory / STAGED).exists():
            raise RotationUnfinished(
                f"{directory} holds a key rotation that did not finish: run `linkage federation rotate-keys` "
                "again with this bundle to finish it"
            )
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


def finish_rotation(directory: Path) -> None:
    """Put a staged generation in place and the current one under `previous/`; safe to run
    again after a crash at any point, and a no-op when nothing is staged.

    The current generation is copied to `previous/` whole before any of its files is
    replaced, and its `key_id` file is replaced last: until then the keys still name the
    old generation, and `next/` still holds what is left to move. Each generation has
    the same files as the one it replaces: the federation's suite never changes.
    """
    staged = directory / STAGED
    shutil.rmtree(directory / (STAGED + PARTIAL), ignore_errors=True)  # a staging a crash cut short
    if not staged.is_dir():
        return
    if (staged / "key_id").exists():
        _archive(directory)
        for name in KEY_FILES:
            if (staged / name).exists():
                os.replace(staged / name, directory / name)
        fsync_dir(directory)
        os.replace(staged / "key_id", directory / "key_id")
        fsync_dir(directory)
    shutil.rmtree(staged)
    fsync_dir(directory)


def _archive(directory: Path) -> None:
    """Copy the current generation to `previous/<key_id>/`, unless an earlier run did."""
    key_id = (directory / "key_id").read_text().strip()
    archive = directory / "previous" / key_id
    if archive.is_dir():
        return
    partial = archive.with_name(key_id + PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    for name in (*KEY_FILES, "key_id"):
        if (directory / name).exists():
            write_private(partial / name, (directory / name).read_bytes())
    os.replace(partial, archive)
    fsync_dir(archive.parent)
