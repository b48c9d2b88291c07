"""The signed directory is trusted only when signed, current, newer and for this federation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage.config import load_directory_key
from linkage.directory import TrustedDirectory, sign_directory
from linkage.keys import public_pem, raw_public
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2
from tests.crypto_fixtures import FED, NOW, make_keyring


def _signed(
    key: ed25519.Ed25519PrivateKey, version: int, expires: int = NOW + 1000, fed: str = FED
) -> directory_pb2.SignedDirectory:
    return sign_directory(directory_pb2.Directory(federation_id=fed, version=version, expires_at_ms=expires), key)


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return make_keyring(()).directory_key


def _refused(trust: TrustedDirectory, signed: directory_pb2.SignedDirectory) -> Reason:
    with pytest.raises(Rejected) as raised:
        trust.accept(signed, NOW)
    return raised.value.reason


def test_accepts_a_signed_current_directory_and_then_only_newer(key: ed25519.Ed25519PrivateKey) -> None:
    trust = TrustedDirectory(FED, key.public_key())
    assert trust.accept(_signed(key, 2), NOW).version == 2
    assert _refused(trust, _signed(key, 1)) == Reason.DIRECTORY_OLDER
    assert trust.accept(_signed(key, 3), NOW).version == 3


def test_refuses_unsigned_expired_and_foreign(key: ed25519.Ed25519PrivateKey) -> None:
    trust = TrustedDirectory(FED, key.public_key())
    other = ed25519.Ed25519PrivateKey.generate()
    assert _refused(trust, _signed(other, 1)) == Reason.DIRECTORY_UNSIGNED
    tampered = _signed(key, 1)
    tampered.directory = tampered.directory + b"\x00"
    assert _refused(trust, tampered) == Reason.DIRECTORY_UNSIGNED
    assert _refused(trust, _signed(key, 1, expires=NOW)) == Reason.DIRECTORY_EXPIRED
    assert _refused(trust, _signed(key, 1, fed="other.example")) == Reason.DIRECTORY_WRONG_FEDERATION


def test_fails_closed_when_the_held_directory_expires(key: ed25519.Ed25519PrivateKey) -> None:
    trust = TrustedDirectory(FED, key.public_key())
    with pytest.raises(Rejected):
        trust.current(NOW)  # nothing held yet
    trust.accept(_signed(key, 1, expires=NOW + 1000), NOW)
    assert trust.current(NOW + 999).version == 1
    with pytest.raises(Rejected) as raised:
        trust.current(NOW + 1000)
    assert raised.value.reason == Reason.DIRECTORY_EXPIRED


def test_key_lookups_respect_status_and_validity() -> None:
    ring = make_keyring(("a", "b"))
    view = ring.view
    assert view.signing_key("a", "a-k1", NOW)
    with pytest.raises(Rejected) as raised:
        view.signing_key("a", "a-k1", NOW + 2 * 86_400_000)
    assert raised.value.reason == Reason.KEY_NOT_VALID
    with pytest.raises(Rejected) as raised:
        view.signing_key("a", "a-k9", NOW)
    assert raised.value.reason == Reason.UNKNOWN_KEY
    view.nodes["b"].status = directory_pb2.NODE_STATUS_REVOKED
    with pytest.raises(Rejected) as raised:
        view.sealing_key("b", NOW)
    assert raised.value.reason == Reason.SENDER_REVOKED


def test_when_the_directory_and_a_nodes_last_key_lapse(key: ed25519.Ed25519PrivateKey) -> None:
    trust = TrustedDirectory(FED, key.public_key())
    assert (trust.expires_at_ms, trust.keys_expire_at_ms("csc")) == (0, 0)  # nothing held: lapsed already
    keys = [directory_pb2.NodeKey(key_id=f"csc-k{n}", not_after_ms=NOW + n * 1000) for n in (2, 1)]
    directory = directory_pb2.Directory(
        federation_id=FED, version=1, expires_at_ms=NOW + 500, nodes=[directory_pb2.NodeEntry(node_id="csc", keys=keys)]
    )
    trust.accept(sign_directory(directory, key), NOW)
    assert trust.expires_at_ms == NOW + 500
    assert trust.keys_expire_at_ms("csc") == NOW + 2000  # the later of two generations
    assert trust.keys_expire_at_ms("nobody") == 0


def test_a_successor_key_named_by_the_held_directory_is_trusted_for_good_and_the_old_one_no_more(
    key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    successor, stranger = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    anchor = tmp_path / "directory.pub"
    anchor.write_bytes(public_pem(key.public_key()))
    trust = TrustedDirectory(FED, load_directory_key(anchor), anchor=anchor)
    trust.accept(_signed(key, 1), NOW)
    assert _refused(trust, _signed(successor, 2)) == Reason.DIRECTORY_UNSIGNED  # nobody named it yet

    naming = directory_pb2.Directory(federation_id=FED, version=2, expires_at_ms=NOW + 1000)
    naming.next_signing_key = raw_public(successor)
    trust.accept(sign_directory(naming, key), NOW)
    assert anchor.read_bytes() == public_pem(key.public_key())  # named, not yet used: nothing changes
    assert _refused(trust, _signed(stranger, 3)) == Reason.DIRECTORY_UNSIGNED

    trust.accept(_signed(successor, 3), NOW)
    assert anchor.read_bytes() == public_pem(successor.public_key())  # a restart trusts it too
    assert _refused(trust, _signed(key, 4)) == Reason.DIRECTORY_UNSIGNED  # the old key is retired
    trust.accept(_signed(successor, 4), NOW)
    restarted = TrustedDirectory(FED, load_directory_key(anchor), anchor=anchor)
    restarted.accept(_signed(successor, 4), NOW)


def test_a_successor_key_that_cannot_be_saved_is_trusted_until_a_restart_and_said_loudly(
    key: ed25519.Ed25519PrivateKey, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    successor = ed25519.Ed25519PrivateKey.generate()
    trust = TrustedDirectory(FED, key.public_key(), anchor=tmp_path / "gone" / "directory.pub")
    naming = directory_pb2.Directory(federation_id=FED, version=1, expires_at_ms=NOW + 1000)
    naming.next_signing_key = raw_public(successor)
    trust.accept(sign_directory(naming, key), NOW)
    trust.accept(_signed(successor, 2), NOW)
    assert trust.version == 2
    (unsaved,) = [json.loads(line) for line in captured_logs.getvalue().splitlines() if "key_not_saved" in line]
    assert unsaved["level"] == "error" and unsaved["error"] == "No such file or directory"
