"""A call that changes something, repeated by its case system after the answer was lost (a
timeout, a dropped connection), must not change it twice: the other agency would get the
same question, request or challenge again, an assessment would be recorded as a second
version, and a repeated escalation, withdrawal or close would be refused as made already.
A call that names a request_id is answered, when repeated, as it was the first time. The
answer is kept in the transaction that makes the change, so either both stand or neither
does (a share keeps its own, with the share: node/sharing.py)."""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from linkage.v1 import node_api_pb2
from node.errors import ApiError, invalid
from node.store import FetchOne, Tx

MAX_REQUEST_ID = 128


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise invalid(f"request_id is at most {MAX_REQUEST_ID} characters")


Request = TypeVar("Request", bound=Message)
Answer = TypeVar("Answer", bound=Message)


def _sha256(request: Message) -> bytes:
    """What the call asked, to tell a repeat from another call given the same id."""
    return hashlib.sha256(
        request.DESCRIPTOR.full_name.encode() + request.SerializeToString(deterministic=True)
    ).digest()


async def answered(fetchone: FetchOne, request: Any, answer_type: type[Answer]) -> Answer | None:
    """The answer an earlier call with this request's request_id was given, if any."""
    request_id: str = request.request_id
    if not request_id:
        return None
    check_request_id(request_id)
    row = await fetchone("SELECT request_sha256, response FROM call_answers WHERE request_id = ?", (request_id,))
    if row is None:
        # A share keeps its id with the share (node/sharing.py): one is used all the same. An
        # answer to an information request that provided a summary was itself that share: its
        # repeat is answered there.
        if not isinstance(request, node_api_pb2.InformationReplyRequest) and await _shared_with(fetchone, request_id):
            raise used_already(request_id)
        return None
    if bytes(row[0]) != _sha256(request):
        raise used_already(request_id)
    return answer_type.FromString(row[1])


def used_already(request_id: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"request_id {request_id!r} was used for another call; choose a new one for each call",
    )


async def _shared_with(fetchone: FetchOne, request_id: str) -> bool:
    return await fetchone("SELECT 1 FROM shares WHERE request_id = ?", (request_id,)) is not None


async def answered_with(fetchone: FetchOne, request_id: str) -> bool:
    """Whether a call other than a share was answered with this request_id."""
    return await fetchone("SELECT 1 FROM call_answers WHERE request_id = ?", (request_id,)) is not None


async def keep(tx: Tx, request: Any, answer: Message) -> None:
    """Keep the answer to a call with a request_id, in the transaction that makes its change."""
    if not request.request_id:
        return
    try:
        await tx.execute(
            "INSERT INTO call_answers(request_id, request_sha256, answered_at_ms, response) VALUES (?, ?, ?, ?)",
            (request.request_id, _sha256(request), tx.now_ms, answer.SerializeToString()),
        )
    except sqlite3.IntegrityError:  # a call racing this one with the same id was answered first
        raise ApiError(
            grpc.StatusCode.ABORTED,
            f"another call with request_id {request.request_id!r} was answered while this one was made; "
            "nothing more was done: repeat this one for its answer",
        ) from None


async def answer_once(
    fetchone: FetchOne, request: Any, answer_type: type[Answer], work: Callable[[], Awaitable[Answer]]
) -> Answer:
    """The answer of `work`, or, to a repeat of a call answered before, that call's answer."""
    if (sent := await answered(fetchone, request, answer_type)) is not None:
        return sent
    try:
        return await work()
    except ApiError:  # refused, perhaps for what a call racing this one with its id has just done
        if (sent := await answered(fetchone, request, answer_type)) is None:
            raise
        return sent


def answering(
    answer_type: type[Answer],
) -> Callable[[Callable[[Any, Request], Awaitable[Answer]]], Callable[[Any, Request], Awaitable[Answer]]]:
    """A call repeated with its request_id is answered as it was, before anything is checked
    again: what the first changed (a challenge escalated, say) would refuse the repeat."""

    def wrap(handler: Callable[[Any, Request], Awaitable[Answer]]) -> Callable[[Any, Request], Awaitable[Answer]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Request) -> Answer:
            return await answer_once(self.ctx.store.fetchone, request, answer_type, lambda: handler(self, request))

        return call

    return wrap


once = answering(node_api_pb2.MessageSent)  # the calls that send through node/requests.py
