"""A node's handling of what it reads from the gateway: at most a window of frames at once,
and a handler that fails is said (its error, the frames' kind and number) and gives its
place back, so reading goes on."""

from __future__ import annotations

import asyncio

import pytest

from linkage.v1 import gateway_pb2
from node import link
from node.resolver import Answers
from tests.harness import CapturedLogs, LocalFederation
from tests.test_link_writes import unconnected

WINDOW = 3


def _ack(n: int) -> gateway_pb2.GatewayFrame:
    return gateway_pb2.GatewayFrame(send_ack=gateway_pb2.SendAck(message_id=f"m{n}"))


async def test_frames_are_handled_a_window_at_a_time_and_a_failed_handler_gives_its_place_back(
    federation: LocalFederation, captured_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "FRAME_WINDOW", WINDOW)
    held = asyncio.Event()  # handlers wait on it, holding their places
    busy = most = 0

    async def handle(frames: list[gateway_pb2.GatewayFrame]) -> None:
        nonlocal busy, most
        busy += len(frames)
        most = max(most, busy)
        try:
            await held.wait()
            raise RuntimeError("the store is gone")
        finally:
            busy -= len(frames)

    reader = unconnected(federation, on_frames=handle)
    try:
        await reader._dispatch([_ack(1), _ack(2)])
        await reader._dispatch([_ack(3)])
        fourth = asyncio.create_task(reader._dispatch([_ack(4)]))  # the window is full: it waits
        await asyncio.sleep(0)  # one turn: the handlers start, the fourth reaches the window
        assert not fourth.done() and busy == WINDOW
        held.set()  # every handler fails, and gives its places back
        async with asyncio.timeout(5):
            await fourth
            for n in range(5, 5 + 2 * WINDOW):  # more than a window, each failing in turn
                await reader._dispatch([_ack(n)])
            while reader._handlers:
                await asyncio.gather(*reader._handlers)
    finally:
        await reader.close()
    assert most == WINDOW
    failed = captured_logs.records("gateway.frame_failed")
    assert [(e["kind"], e["frames"]) for e in failed] == [("send_ack", 2)] + [("send_ack", 1)] * (2 + 2 * WINDOW)
    assert all("the store is gone" in str(e) for e in failed)


class _UnaryGateway:
    """A gateway's stub, as far as a unary look-up goes, that says it will push changes."""

    def __init__(self, token: bytes) -> None:
        self.token = token

    async def ResolveRecipients(
        self, request: gateway_pb2.ResolveRecipientsRequest, **_: object
    ) -> gateway_pb2.ResolveRecipientsResponse:
        involved = gateway_pb2.TokenInvolvement(link_token=self.token, node_ids=["csc"])
        return gateway_pb2.ResolveRecipientsResponse(by_token=[involved], changes_pushed=True)


async def test_an_answer_by_a_unary_call_is_never_kept_whatever_the_gateway_says(federation: LocalFederation) -> None:
    """With no stream, a look-up goes by a unary call, and no notice that it stopped holding
    could reach this node: it is used for the share that asked, never kept for the next."""
    token = bytes(range(32))
    link = unconnected(federation)
    link._stub = _UnaryGateway(token)  # type: ignore[assignment]  # a stub, as far as a look-up goes
    try:
        answers = await link.resolve([token])
    finally:
        await link.close()
    assert answers == Answers({token: ["csc"]}, pushed=False)
