"""What the gateway writes to a node's stream: frames waiting together go as one batch, and
a lone "forwarded" answer waits briefly for company (the receipt that usually follows it)."""

from __future__ import annotations

import asyncio

import pytest

from gateway import sessions
from gateway.sessions import Session
from linkage.v1 import envelope_pb2, gateway_pb2


@pytest.fixture(autouse=True)
def _linger_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    """Longer than any test runs: a frame that came out lingered for nothing."""
    monkeypatch.setattr(sessions, "ACK_LINGER_S", 3600)


def ack(status: gateway_pb2.SendStatus.ValueType = gateway_pb2.SEND_STATUS_FORWARDED) -> gateway_pb2.GatewayFrame:
    return gateway_pb2.GatewayFrame(send_ack=gateway_pb2.SendAck(message_id="m1", recipient_node="csc", status=status))


def receipt() -> gateway_pb2.GatewayFrame:
    return gateway_pb2.GatewayFrame(receipt=envelope_pb2.Receipt(body=b"signed elsewhere"))


def kinds(frame: gateway_pb2.GatewayFrame) -> list[str]:
    members = frame.batch.frames if frame.HasField("batch") else [frame]
    return [str(m.WhichOneof("frame")) for m in members]


async def test_a_forwarded_answer_waits_for_the_next_frame_and_goes_with_it() -> None:
    session = Session("amh", limit=16)
    written = session.frames()
    assert session.push(ack())
    first = asyncio.ensure_future(anext(written))
    await asyncio.sleep(0)  # the writer runs until it waits: were it not lingering, it would be done
    assert not first.done()
    assert session.push(receipt())
    async with asyncio.timeout(10):
        assert kinds(await first) == ["send_ack", "receipt"]


@pytest.mark.parametrize(
    "frame",
    [
        receipt(),
        ack(gateway_pb2.SEND_STATUS_RECIPIENT_OFFLINE),
        ack(gateway_pb2.SEND_STATUS_BUSY),
        gateway_pb2.GatewayFrame(peer_online=gateway_pb2.PeerOnline(node_id="csc")),
    ],
    ids=["receipt", "offline", "busy", "peer_online"],
)
async def test_every_other_frame_goes_at_once(frame: gateway_pb2.GatewayFrame) -> None:
    session = Session("amh", limit=16)
    assert session.push(frame)
    async with asyncio.timeout(10):
        assert kinds(await anext(session.frames())) == kinds(frame)


async def test_a_forwarded_answer_with_other_frames_waiting_does_not_linger() -> None:
    session = Session("amh", limit=16)
    assert session.push(ack()) and session.push(ack(gateway_pb2.SEND_STATUS_BUSY))
    async with asyncio.timeout(10):
        assert kinds(await anext(session.frames())) == ["send_ack", "send_ack"]


async def test_a_lingering_answer_is_written_before_the_stream_ends() -> None:
    session = Session("amh", limit=16)
    assert session.push(ack())
    written = session.frames()
    first = asyncio.ensure_future(anext(written))
    await asyncio.sleep(0)
    session.close()
    async with asyncio.timeout(10):
        assert kinds(await first) == ["send_ack"]
        assert [f async for f in written] == []
