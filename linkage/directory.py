"""The signed federation directory: verification and look-ups.

Nodes and the gateway accept a directory only if it is signed by the federation
directory key (or a key that one handed over to, in a chain of handovers each signed by
the key it retires), is for their federation, is not older than the one they hold, and
has not expired (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from linkage import logs
from linkage.clock import utc_minute
from linkage.files import write_atomic
from linkage.keys import public_pem
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2 as pb

DIRECTORY_LABEL = b"linkage/v1/directory\x00"
HANDOVER_LABEL = b"linkage/v1/directory-handover\x00"
log = logs.get("directory")


def load_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The key that signs the directory, from its PEM file; ValueError, saying so, if the file holds none."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(
            f"{path} is not the federation's directory key (an Ed25519 public key in PEM: "
            "the directory.pub that enrolment copies)"
        )
    return key


def read_signed(path: Path) -> pb.SignedDirectory:
    """The signed directory in a file, unchecked; Rejected (malformed) if it is not one."""
    return parse_signed(path.read_bytes())


def parse_signed(data: bytes) -> pb.SignedDirectory:
    """A signed directory's bytes, unchecked; Rejected (malformed) if they are not one."""
    try:
        return pb.SignedDirectory.FromString(data)
    except DecodeError:
        raise Rejected(Reason.MALFORMED, "not a signed directory (it does not parse)") from None


def sign_directory(directory: pb.Directory, key: ed25519.Ed25519PrivateKey) -> pb.SignedDirectory:
    body = directory.SerializeToString()
    return pb.SignedDirectory(directory=body, signature=key.sign(DIRECTORY_LABEL + body))


def sign_handover(
    federation_id: str, retiring: ed25519.Ed25519PrivateKey, to_key: bytes, at_ms: int
) -> pb.SignedHandover:
    """The retiring directory key's word that `to_key` signs the directory after it."""
    body = pb.KeyHandover(
        federation_id=federation_id, from_key=retiring.public_key().public_bytes_raw(), to_key=to_key, at_ms=at_ms
    ).SerializeToString()
    return pb.SignedHandover(handover=body, signature=retiring.sign(HANDOVER_LABEL + body))


def handed_over(
    signed: pb.SignedDirectory, trusted: ed25519.Ed25519PublicKey, federation_id: str
) -> Iterator[ed25519.Ed25519PublicKey]:
    """The keys the directory's handovers lead to from `trusted`, in order: each step signed
    by the key before it, for this federation. A step anyone else signed leads nowhere."""
    try:
        steps = [
            (pb.KeyHandover.FromString(h.handover), h) for h in pb.Directory.FromString(signed.directory).handovers
        ]
    except DecodeError:
        return
    key, seen = trusted, {trusted.public_bytes_raw()}
    while True:
        raw = key.public_bytes_raw()
        step = next(
            (
                s
                for s, h in steps
                if s.from_key == raw
                and s.federation_id == federation_id
                and _verifies(key, h.signature, HANDOVER_LABEL + h.handover)
            ),
            None,
        )
        if step is None or step.to_key in seen:
            return
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(step.to_key)
        except ValueError:  # not a key: no honest handover names one
            return
        seen.add(step.to_key)
        yield key


def _verifies(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _signed_by(signed: pb.SignedDirectory, key: ed25519.Ed25519PublicKey) -> bool:
    return _verifies(key, signed.signature, DIRECTORY_LABEL + signed.directory)


@dataclass(frozen=True)
class DirectoryView:
    """A verified directory with indexes for the per-message look-ups."""

    directory: pb.Directory
    signed: pb.SignedDirectory
    nodes: dict[str, pb.NodeEntry]
    signer: bytes  # the directory key that signed it, Ed25519 raw

    @property
    def version(self) -> int:
        return self.directory.version

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.directory.expires_at_ms

    def keys_expire_at_ms(self, node_id: str) -> int:
        """When the last of a node's message keys lapses: after it, nobody can seal to the
        node (0 when the directory names none)."""
        entry = self.nodes.get(node_id)
        return max((k.not_after_ms for k in entry.keys), default=0) if entry else 0

    def active_node(self, node_id: str) -> pb.NodeEntry:
        entry = self.nodes.get(node_id)
        if entry is None:
            raise Rejected(Reason.UNKNOWN_SENDER, f"node {node_id!r} is not in the directory")
        if entry.status != pb.NODE_STATUS_ACTIVE:
            raise Rejected(Reason.SENDER_REVOKED, f"node {node_id!r} is revoked")
        return entry

    def node_key(self, node_id: str, key_id: str, at_ms: int) -> pb.NodeKey:
        """Key generation `key_id` of an active node, valid at `at_ms`."""
        for key in self.active_node(node_id).keys:
            if key.key_id == key_id:
                if not key.not_before_ms <= at_ms < key.not_after_ms:
                    raise Rejected(Reason.KEY_NOT_VALID, f"key {key_id!r} not valid at {at_ms}")
                return key
        raise Rejected(Reason.UNKNOWN_KEY, f"node {node_id!r} has no key {key_id!r}")

    def signing_key(self, node_id: str, key_id: str, at_ms: int) -> bytes:
        """The Ed25519 key `key_id` of an active node, valid at `at_ms`."""
        return self.node_key(node_id, key_id, at_ms).signing_public_key

    def sealing_key(self, node_id: str, now_ms: int) -> pb.NodeKey:
        """The newest key of an active node valid now; a sender never seals to an expired key."""
        valid = [k for k in self.active_node(node_id).keys if k.not_before_ms <= now_ms < k.not_after_ms]
        if not valid:
            raise Rejected(Reason.KEY_NOT_VALID, f"node {node_id!r} has no key valid now")
        return max(valid, key=lambda k: k.not_before_ms)

    def witness_key(self, gateway_id: str) -> bytes:
        """The Ed25519 key with which gateway `gateway_id` cosigns what it witnesses."""
        entry = next((g for g in self.directory.gateways if g.gateway_id == gateway_id), None)
        if entry is None or not entry.witness_public_key:
            raise Rejected(Reason.UNKNOWN_KEY, f"the directory names no witness key for gateway {gateway_id!r}")
        return entry.witness_public_key


def verify_directory(
    signed: pb.SignedDirectory,
    public_key: ed25519.Ed25519PublicKey,
    federation_id: str,
    now_ms: int,
    have_version: int = 0,
) -> DirectoryView:
    """Check signature, federation, version and expiry; return an indexed view."""
    if not _signed_by(signed, public_key):
        raise Rejected(Reason.DIRECTORY_UNSIGNED, "directory signature does not verify")
    directory = pb.Directory.FromString(signed.directory)
    if directory.federation_id != federation_id:
        raise Rejected(Reason.DIRECTORY_WRONG_FEDERATION, f"directory is for {directory.federation_id!r}")
    if directory.version < have_version:
        raise Rejected(Reason.DIRECTORY_OLDER, f"version {directory.version} < held {have_version}")
    if now_ms >= directory.expires_at_ms:
        raise Rejected(Reason.DIRECTORY_EXPIRED, f"expired at {utc_minute(directory.expires_at_ms)}")
    nodes = {n.node_id: n for n in directory.nodes}
    return DirectoryView(directory=directory, signed=signed, nodes=nodes, signer=public_key.public_bytes_raw())


class TrustedDirectory:
    """The directory a process currently trusts; replaced only by a newer valid one.

    Signed by the federation's directory key, or by a key the directory's handovers lead to
    from it: that one is then trusted instead, for good (it is written to `anchor`, the
    process's copy of the directory key, before anything signed by it is taken)."""

    def __init__(self, federation_id: str, public_key: ed25519.Ed25519PublicKey, anchor: Path | None = None) -> None:
        self.federation_id = federation_id
        self.public_key = public_key
        self.anchor = anchor
        self._view: DirectoryView | None = None

    @property
    def view(self) -> DirectoryView | None:
        """The directory held, current or not (None: none yet)."""
        return self._view

    @property
    def version(self) -> int:
        return self._view.version if self._view else 0

    @property
    def issued_at_ms(self) -> int:
        return self._view.directory.issued_at_ms if self._view else 0

    @property
    def expires_at_ms(self) -> int:
        return self._view.directory.expires_at_ms if self._view else 0

    def keys_expire_at_ms(self, node_id: str) -> int:
        return self._view.keys_expire_at_ms(node_id) if self._view else 0

    def node_entry(self, node_id: str) -> pb.NodeEntry | None:
        """A node's entry in the held directory, current or not (None: none held, or not in it)."""
        return self._view.nodes.get(node_id) if self._view else None

    def active_nodes(self) -> list[str]:
        """The nodes the held directory lists as active, by id (none while none is held)."""
        nodes = self._view.nodes.items() if self._view else ()
        return sorted(node_id for node_id, entry in nodes if entry.status == pb.NODE_STATUS_ACTIVE)

    def pinned_certificate(self, node_id: str) -> bytes:
        """The fingerprint of the TLS certificate the held directory pins for a node (b"": none)."""
        entry = self.node_entry(node_id)
        return entry.tls_cert_sha256 if entry else b""

    def accept(self, signed: pb.SignedDirectory, now_ms: int) -> DirectoryView:
        """Take `signed` if it may be taken (see `check`)."""
        view, signer = self.check(signed, now_ms)
        self.take(view, signer)
        return view

    def check(self, signed: pb.SignedDirectory, now_ms: int) -> tuple[DirectoryView, ed25519.Ed25519PublicKey | None]:
        """The directory `signed` holds, if it is valid and no older than the one held, and the
        key that signed it where the handovers led to a new one; nothing is taken yet, so a
        process can record the change before it makes it."""
        try:
            return verify_directory(signed, self.public_key, self.federation_id, now_ms, self.version), None
        except Rejected as exc:
            if exc.reason != Reason.DIRECTORY_UNSIGNED:
                raise
            signer = next(
                (k for k in handed_over(signed, self.public_key, self.federation_id) if _signed_by(signed, k)), None
            )
            if signer is None:
                raise
            return verify_directory(signed, signer, self.federation_id, now_ms, self.version), signer

    def take(self, view: DirectoryView, signer: ed25519.Ed25519PublicKey | None) -> None:
        """Hold `view`, as `check` gave it, trusting `signer` from now on if it is a new key."""
        if signer is not None:
            self._trust(signer)  # only once the whole directory passed: an expired or older one moves nothing
        self._view = view

    def _trust(self, key: ed25519.Ed25519PublicKey) -> None:
        """From now on, and after a restart, only `key` signs directories. Without an anchor
        (a command that only reads a bundle) the handover is followed quietly, and kept nowhere."""
        if self.anchor is not None:
            try:
                write_atomic(self.anchor, public_pem(key))
            except OSError as exc:  # trusted all the same; a restart follows the handovers again: said loudly
                log.error("directory.key_not_saved", anchor=str(self.anchor), error=exc.strerror)
            log.warning("directory.key_rotated", anchor=str(self.anchor), signing_key=key.public_bytes_raw().hex())
        self.public_key = key

    def serving(self, now_ms: int) -> bool:
        """Whether a current directory is held; when not, the process fails closed."""
        try:
            self.current(now_ms)
        except Rejected as exc:
            log.error("directory.expired", reason=exc.reason.value)
            return False
        return True

    def current(self, now_ms: int) -> DirectoryView:
        """The held directory; fail closed when there is none or it has expired."""
        if self._view is None:
            raise Rejected(Reason.DIRECTORY_EXPIRED, "no directory is held yet")
        if self._view.expired(now_ms):
            raise Rejected(Reason.DIRECTORY_EXPIRED, "the held directory has expired")
        return self._view
