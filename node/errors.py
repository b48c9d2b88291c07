"""Errors the node API turns into gRPC statuses with a message a person can act on."""

from __future__ import annotations

import grpc

from node.policy.rules import MAX_TEXT, control_character


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, message)


def past_the_end(after_seq: int, last: int, what: str) -> ApiError:
    """A resume point past every number the store has given (restores are numbered past,
    node/event_numbers.py): resuming there would skip what comes next until the numbers
    passed it."""
    return ApiError(
        grpc.StatusCode.OUT_OF_RANGE,
        f"after_seq {after_seq} is past the last {what} this node has numbered ({last}): it is not a number "
        f"this node gave, or its store was put back to an earlier copy not yet recorded. Resume from {last}",
    )


def check_notes(**notes: str) -> None:
    """Each free-text field of a call (a question, an answer, a reason, a note: named as the
    API names it) is held to a summary's rules for its texts: a message, not the record, and
    plain text."""
    for name, text in notes.items():
        if len(text) > MAX_TEXT:
            raise invalid(f"{name} is {len(text):,} characters; keep it under {MAX_TEXT:,}: say what is necessary")
        if problem := control_character(text):
            raise invalid(f"{name} {problem}")
