"""Reason codes for every refusal. Machine-readable, audited, safe to log."""

from __future__ import annotations

from enum import StrEnum

from linkage.refusals import bounded


class Reason(StrEnum):
    MALFORMED = "malformed"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_SENDER = "unknown_sender"
    SENDER_REVOKED = "sender_revoked"
    SENDER_MISMATCH = "sender_mismatch"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_VALID = "key_not_valid"
    UNSUPPORTED_SUITE = "unsupported_suite"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    STALE = "stale"
    FUTURE = "future"
    EXPIRED = "expired"
    DECRYPT_FAILED = "decrypt_failed"
    BAD_SIGNATURE = "bad_signature"
    HEADER_MISMATCH = "header_mismatch"
    CONFLICT = "conflict"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    RECIPIENT_REVOKED = "recipient_revoked"
    TOO_LARGE = "too_large"
    NO_TOKENS = "no_tokens"
    DIRECTORY_UNSIGNED = "directory_unsigned"
    DIRECTORY_OLDER = "directory_older"
    DIRECTORY_EXPIRED = "directory_expired"
    DIRECTORY_WRONG_FEDERATION = "directory_wrong_federation"


# Refusals the two clocks decide: a message made ahead of the recipient's time (or stamped
# by a clock running fast), or older than it may be by the recipient's clock. Time, or a
# clock put right, ends them, so they defer a message rather than refuse it for good.
CLOCK_REASONS = frozenset({Reason.FUTURE, Reason.STALE, Reason.EXPIRED})
# Refusals a recipient may defer, its sender then sending again until the message expires:
# the clocks', and those that wait for the recipient to take a newer directory (naming the
# sender, or the key it signs with) or to put its own new keys in place.
DEFERRING_REASONS = CLOCK_REASONS | {Reason.UNKNOWN_SENDER, Reason.UNKNOWN_KEY}


# A refusal's detail often quotes what was refused (a node id, a key id), which may be
# anything its sender chose: it goes into audit entries and log lines, so only so much of it.
MAX_DETAIL_BYTES = 200


class Rejected(Exception):
    """A message or document refused for a stated reason."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        detail = bounded(detail, MAX_DETAIL_BYTES)
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
