"""The signed directory is trusted only when signed, current, newer and for this federation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage.config import load_directory_key
from linkage.directory import HANDOVER_LABEL, TrustedDirectory, sign_directory, sign_handover
from linkage.keys import public_pem, raw_public
from linkage.reasons import Reason, Rejected
from linkage.v1 import directory_pb2
from tests.crypto_fixtures import FED, NOW, make_keyring
from tests.harness import CapturedLogs


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
    assert trust.accept(_signed(key, 2, expires=NOW + 2000), NOW).version == 2  # the one held, fetched again
    assert trust.expires_at_ms == NOW + 2000
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
    assert (raised.value.reason, raised.value.detail) == (
        Reason.KEY_NOT_VALID,
        f"key 'a-k1' not valid at {NOW + 2 * 86_400_000}",
    )
    with pytest.raises(Rejected) as raised:
        view.signing_key("nobody", "a-k1", NOW)
    assert (raised.value.reason, raised.value.detail) == (
        Reason.UNKNOWN_SENDER,
        "node 'nobody' is not in the directory",
    )
    with pytest.raises(Rejected) as raised:
        view.signing_key("a", "a-k9", NOW)
    assert raised.value.reason == Reason.UNKNOWN_KEY
    assert view.sealing_key("b", NOW).key_id == "b-k1"
    with pytest.raises(Rejected) as raised:  # a sender never seals to a key that has lapsed
        view.sealing_key("b", NOW + 2 * 86_400_000)
    assert (raised.value.reason, raised.value.detail) == (Reason.KEY_NOT_VALID, "node 'b' has no key valid now")
    view.nodes["b"].status = directory_pb2.NODE_STATUS_REVOKED
    with pytest.raises(Rejected) as raised:
        view.sealing_key("b", NOW)
    assert raised.value.reason == Reason.SENDER_REVOKED


def test_when_the_directory_and_a_nodes_last_key_lapse(key: ed25519.Ed25519PrivateKey) -> None:
    trust = TrustedDirectory(FED, key.public_key())
    nothing = (trust.version, trust.issued_at_ms, trust.expires_at_ms, trust.keys_expire_at_ms("csc"))
    assert nothing == (0, 0, 0, 0) and trust.active_nodes() == []  # nothing held: lapsed already
    keys = [directory_pb2.NodeKey(key_id=f"csc-k{n}", not_after_ms=NOW + n * 1000) for n in (2, 1)]
    active, revoked = directory_pb2.NODE_STATUS_ACTIVE, directory_pb2.NODE_STATUS_REVOKED
    nodes = [
        directory_pb2.NodeEntry(node_id="csc", keys=keys, status=active),
        directory_pb2.NodeEntry(node_id="police", keys=keys, status=revoked),
        directory_pb2.NodeEntry(node_id="amh", status=active),  # enrolled, no key published yet
    ]
    directory = directory_pb2.Directory(federation_id=FED, version=1, expires_at_ms=NOW + 500, nodes=nodes)
    trust.accept(sign_directory(directory, key), NOW)
    assert trust.expires_at_ms == NOW + 500
    assert trust.keys_expire_at_ms("csc") == NOW + 2000  # the later of two generations
    assert (trust.keys_expire_at_ms("nobody"), trust.keys_expire_at_ms("amh")) == (0, 0)
    assert trust.active_nodes() == ["amh", "csc"]


def _handing_over(
    key: ed25519.Ed25519PrivateKey, version: int, *steps: directory_pb2.SignedHandover, expires: int = NOW + 1000
) -> directory_pb2.SignedDirectory:
    """A directory signed by `key` that carries `steps`, the history of the directory key."""
    body = directory_pb2.Directory(federation_id=FED, version=version, expires_at_ms=expires, handovers=steps)
    return sign_directory(body, key)


def test_a_key_handed_over_to_is_trusted_for_good_and_the_old_ones_no_more(
    key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A process that trusts the first key, away for two rotations, follows both handovers
    to the key that signs now, keeps it across a restart, and takes nothing the others sign."""
    second, third = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    anchor = tmp_path / "directory.pub"
    anchor.write_bytes(public_pem(key.public_key()))
    trust = TrustedDirectory(FED, load_directory_key(anchor), anchor=anchor)
    trust.accept(_signed(key, 1), NOW)
    assert _refused(trust, _signed(third, 2)) == Reason.DIRECTORY_UNSIGNED  # nothing hands over to it

    history = (sign_handover(FED, key, raw_public(second), NOW), sign_handover(FED, second, raw_public(third), NOW))
    view = trust.accept(_handing_over(third, 2, *reversed(history)), NOW)  # in any order
    assert view.signer == raw_public(third)
    assert anchor.read_bytes() == public_pem(third.public_key())  # a restart trusts it too
    assert _refused(trust, _handing_over(key, 3, *history)) == Reason.DIRECTORY_UNSIGNED  # retired
    assert _refused(trust, _handing_over(second, 3, *history)) == Reason.DIRECTORY_UNSIGNED
    trust.accept(_handing_over(third, 3, *history), NOW)
    restarted = TrustedDirectory(FED, load_directory_key(anchor), anchor=anchor)
    assert restarted.accept(_handing_over(third, 3, *history), NOW).signer == raw_public(third)

    # One that took the first handover's directory already follows the second alone.
    midway = TrustedDirectory(FED, second.public_key())
    assert midway.accept(_handing_over(third, 3, *history), NOW).signer == raw_public(third)


def test_handovers_that_do_not_lead_from_the_trusted_key_move_nothing(
    key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    new, stranger = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    anchor = tmp_path / "directory.pub"
    anchor.write_bytes(public_pem(key.public_key()))
    trust = TrustedDirectory(FED, load_directory_key(anchor), anchor=anchor)
    trust.accept(_signed(key, 5), NOW)
    forged = sign_handover(FED, stranger, raw_public(new), NOW)
    claim = directory_pb2.KeyHandover(
        federation_id=FED, from_key=raw_public(key), to_key=raw_public(new)
    ).SerializeToString()
    claimed = directory_pb2.SignedHandover(handover=claim, signature=stranger.sign(HANDOVER_LABEL + claim))
    cases = {
        "signed by another key": claimed,
        "from another key": forged,
        "for another federation": sign_handover("other.example", key, raw_public(new), NOW),
        "to no key at all": sign_handover(FED, key, b"\x01" * 31, NOW),
    }
    for case, step in cases.items():
        assert _refused(trust, _handing_over(new, 6, step)) == Reason.DIRECTORY_UNSIGNED, case
    garbled = directory_pb2.SignedHandover(handover=b"\xff\xff", signature=b"")
    assert _refused(trust, _handing_over(new, 6, garbled)) == Reason.DIRECTORY_UNSIGNED
    # A true handover, but on a directory refused for another reason, moves the anchor nowhere.
    true_step = sign_handover(FED, key, raw_public(new), NOW)
    assert _refused(trust, _handing_over(new, 6, true_step, expires=NOW)) == Reason.DIRECTORY_EXPIRED
    assert _refused(trust, _handing_over(new, 4, true_step)) == Reason.DIRECTORY_OLDER
    assert anchor.read_bytes() == public_pem(key.public_key()) and trust.version == 5
    # A handover back to a key already passed (a loop) ends the walk rather than spinning.
    looped = (true_step, sign_handover(FED, new, raw_public(key), NOW))
    assert _refused(trust, _handing_over(stranger, 6, *looped)) == Reason.DIRECTORY_UNSIGNED
    assert trust.accept(_handing_over(new, 6, *looped), NOW).signer == raw_public(new)


def test_a_key_handed_over_to_that_cannot_be_saved_is_trusted_until_a_restart_and_said_loudly(
    key: ed25519.Ed25519PrivateKey, tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    new = ed25519.Ed25519PrivateKey.generate()
    trust = TrustedDirectory(FED, key.public_key(), anchor=tmp_path / "gone" / "directory.pub")
    trust.accept(_handing_over(new, 2, sign_handover(FED, key, raw_public(new), NOW)), NOW)
    assert trust.version == 2
    (unsaved,) = captured_logs.records("directory.key_not_saved")
    assert unsaved["level"] == "error" and unsaved["error"] == "No such file or directory"


def test_a_key_is_valid_from_its_first_millisecond_until_its_end_exclusive() -> None:
    """[not_before, not_after): a message made as a key activates verifies under it, and one made
    as it lapses does not, under the same rule for signing and sealing."""
    view = make_keyring().view
    key = view.nodes["a"].keys[0]
    start, end = key.not_before_ms, key.not_after_ms
    for at in (start, end - 1):
        assert view.node_key("a", key.key_id, at) == key and view.sealing_key("a", at) == key
    for at in (start - 1, end):
        with pytest.raises(Rejected) as refused:
            view.node_key("a", key.key_id, at)
        assert refused.value.reason is Reason.KEY_NOT_VALID
        with pytest.raises(Rejected):
            view.sealing_key("a", at)


def test_during_a_rotation_a_sender_seals_to_the_newest_key_valid_now() -> None:
    view = make_keyring().view
    old = view.nodes["a"].keys[0]
    new = view.nodes["a"].keys.add()
    new.CopyFrom(old)
    new.key_id, new.not_before_ms = "a-k2", old.not_before_ms + 1_000
    assert view.sealing_key("a", new.not_before_ms - 1) == old
    assert view.sealing_key("a", new.not_before_ms) == new
