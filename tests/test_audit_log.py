"""The audit log's one-pass check (`verify_log`): where it says a log went bad, which the IG
officer starts from; and the bytes a checkpoint and a witness's cosignature sign, as
audit.proto gives them to anyone checking them with other tools."""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linkage.auditlog import cosign, sign_checkpoint, verify_log
from tests.test_audit_verify_ranges import audit_rows, checkpoints_at, tampered

AT_MS = 1_767_225_600_000


def test_a_log_rewritten_with_its_hashes_is_bad_from_after_the_last_checkpoint_it_matches() -> None:
    rows = audit_rows(12)
    rewritten = tampered(rows, "rechain", 6)  # entry 7 changed, and every hash from there made again
    report = verify_log(rewritten, checkpoints_at(rows, [(3, True), (6, True), (9, True)]))
    assert report.confirmed == [3, 6]
    assert report.first_bad_seq == 7
    assert report.problems == [
        f"entries 1-9 differ from the checkpoint signed at {AT_MS + 9}: the log was rewritten at or after entry 7"
    ]


def test_a_log_rewritten_before_every_checkpoint_is_bad_from_its_first_entry() -> None:
    rows = audit_rows(12)
    report = verify_log(tampered(rows, "rechain", 6), checkpoints_at(rows, [(9, True)]))
    assert report.confirmed == [] and report.first_bad_seq == 1


def test_a_log_cut_short_is_measured_against_the_longest_checkpoint() -> None:
    rows = audit_rows(12)
    report = verify_log(rows[:10], checkpoints_at(rows, [(3, True), (12, True)]))
    assert report.entries == 10 and report.confirmed == [3]
    assert report.first_bad_seq == 11
    assert report.problems == ["the log has 10 entries but a checkpoint vouches for 12: entries 11-12 were removed"]


def test_a_checkpoint_is_signed_over_its_label_and_its_body() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_checkpoint(key, "k1", "amh", 5, bytes(32), AT_MS)
    key.public_key().verify(signed.signature, b"linkage/v1/checkpoint\x00" + signed.checkpoint)


def test_a_cosignature_is_over_the_label_the_gateway_the_time_and_the_checkpoint() -> None:
    node_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signed = sign_checkpoint(node_key, "k1", "amh", 5, bytes(32), AT_MS)
    cosignature = cosign(witness_key, "gateway", signed, AT_MS + 123)
    message = b"linkage/v1/cosignature\x00gateway\x00" + struct.pack(">q", AT_MS + 123) + signed.checkpoint
    witness_key.public_key().verify(cosignature.signature, message)
