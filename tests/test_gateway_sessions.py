"""What the gateway writes to a node's stream: frames waiting together go as one batch, and
a lone "forwarded" answer waits briefly for company (the receipt that usually follows it).
And who is connected: a node's answers and notices have room beyond its queue's limit, a
newer stream replaces an older one, and the senders waiting for a node are told it is back."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway import sessions
from gateway.sessions import Session, Sessions
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


async def test_a_frame_alone_goes_as_itself_not_as_a_batch_of_one() -> None:
    session = Session("amh", limit=16)
    assert session.push(receipt())
    async with asyncio.timeout(10):
        assert (await anext(session.frames())).WhichOneof("frame") == "receipt"


def test_a_stream_closed_twice_tells_its_node_the_first_reason() -> None:
    session = Session("amh", limit=16)
    session.close((grpc.StatusCode.ABORTED, "replaced"))
    session.close((grpc.StatusCode.UNAVAILABLE, "too far behind"))
    assert session.ending and session.error == (grpc.StatusCode.ABORTED, "replaced")


def test_a_nodes_answers_and_notices_have_room_beyond_a_queue_full_of_messages() -> None:
    live = Sessions(queue_limit=2, answer_headroom=2)
    amh = live.open("amh")
    message = gateway_pb2.GatewayFrame(deliver=envelope_pb2.Envelope(routing=b"sealed elsewhere"))
    assert amh.push(message) and amh.push(message)
    assert not amh.push(message)  # other nodes' messages: no more than the limit
    live.wait_for("csc", "amh")  # amh sent to csc while it was away
    live.open("csc")
    live.notify(amh, gateway_pb2.LinksChanged())
    assert not amh.ending
    live.notify(amh, gateway_pb2.LinksChanged())  # beyond the headroom: the stream ends, to be redialled
    assert amh.ending and amh.error is not None and amh.error[0] == grpc.StatusCode.UNAVAILABLE
    queued = [amh.queue.get_nowait() for _ in range(amh.queue.qsize())]
    assert [f and f.WhichOneof("frame") for f in queued] == ["deliver", "deliver", "peer_online", "links_changed", None]


def test_a_replaced_stream_ending_leaves_the_newer_one_live() -> None:
    live = Sessions()
    older = live.open("amh")
    newer = live.open("amh")
    assert older.ending and older.error is not None and older.error[0] == grpc.StatusCode.ABORTED
    live.end(older)
    assert live.get("amh") is newer
    live.end(newer)
    assert live.get("amh") is None
