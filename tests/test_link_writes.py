"""A node's writes on its stream to the gateway. Frames written together fail together when
the stream goes, and each sender is told, with no failure left for asyncio to report as
nobody's (an error line in the operators' log); and a write cancelled as the node stops
leaves nobody waiting for a writer that will never come."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from linkage.frames import MAX_BATCH_BYTES, MAX_BATCH_FRAMES
from linkage.v1 import gateway_pb2
from node.link import GatewayLink, NotConnected
from tests.harness import LocalFederation


class Stream:
    """A gRPC stream as far as writing goes: a write waits while `flowing` is clear (gRPC's
    flow control), fails once the stream is gone, and, as gRPC's does, cancelling a write
    cancels the whole stream."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.waiting = asyncio.Event()  # a write is waiting for the flow
        self.gone = False
        self.cancelled = False
        self.written: list[gateway_pb2.NodeFrame] = []
        self.wrote = asyncio.Event()  # a message was written
        self.ended_after: int | None = None  # how many messages were written when this side was ended
        self.goes_after: int | None = None  # how many messages it takes before it is gone, if it is to go

    async def write(self, message: gateway_pb2.NodeFrame) -> None:
        try:
            if not self.flowing.is_set():
                self.waiting.set()
            await self.flowing.wait()
        except asyncio.CancelledError:
            self.cancelled = self.gone = True
            raise
        if self.goes_after is not None and len(self.written) >= self.goes_after:
            self.gone = True
        if self.gone:
            raise grpc.aio.UsageError("RPC already finished.")
        self.written.append(message)
        self.wrote.set()

    async def done_writing(self) -> None:
        self.ended_after = len(self.written)

    def cancel(self) -> bool:  # a gateway that does not close its side in time
        self.cancelled = self.gone = True
        return True


def resolve(n: int) -> gateway_pb2.NodeFrame:
    return gateway_pb2.NodeFrame(resolve=gateway_pb2.ResolveRecipientsRequest(request_id=n))


def _frames(stream: Stream) -> list[gateway_pb2.NodeFrame]:
    """The frames written, in order, out of the batches that carried them."""
    return [f for m in stream.written for f in (m.batch.frames if m.HasField("batch") else [m])]


def _written(stream: Stream) -> list[int]:
    return [f.resolve.request_id for f in _frames(stream)]


async def _nothing(*_: object) -> None:
    return None


def unconnected(
    federation: LocalFederation, on_frames: Callable[[list[gateway_pb2.GatewayFrame]], Awaitable[None]] = _nothing
) -> GatewayLink:
    """amh's link, dialling nowhere: its parts are driven by hand."""
    tls = federation.node_configs["amh"].tls.read()
    return GatewayLink(
        "amh", "127.0.0.1:1", "gateway", tls, on_connect=_nothing, on_frames=on_frames, on_state=_nothing
    )


@pytest.fixture
async def link(federation: LocalFederation) -> AsyncIterator[tuple[GatewayLink, Stream]]:
    link = unconnected(federation)
    stream = Stream()
    link._call = stream  # type: ignore[assignment]  # a stream, as far as writing goes
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        yield link, stream
        gc.collect()  # asyncio reports a failure nobody retrieved as its future goes
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)
        await link.close()


async def test_frames_written_together_on_a_stream_that_went_fail_together(link: tuple[GatewayLink, Stream]) -> None:
    gateway_link, stream = link
    stream.gone = True
    with pytest.raises(NotConnected):
        await gateway_link.send_all([resolve(n) for n in (1, 2, 3)])
    assert stream.written == []


async def test_frames_that_went_only_in_part_fail_and_the_writer_is_let_go(link: tuple[GatewayLink, Stream]) -> None:
    """More frames than one batch holds, and the stream gone after the first: the sender is
    told they did not all go (the outbox sends them all again), and the writer, done, is not
    kept (one is made for each write while none is under way)."""
    gateway_link, stream = link
    stream.goes_after = 1
    with pytest.raises(NotConnected):
        await gateway_link.send_all([resolve(n) for n in range(MAX_BATCH_FRAMES + 1)])
    assert _written(stream) == list(range(MAX_BATCH_FRAMES))
    await asyncio.gather(*gateway_link._handlers)
    assert not gateway_link._handlers and not gateway_link._writing


async def test_frames_are_batched_by_their_bytes_as_well_as_their_count(link: tuple[GatewayLink, Stream]) -> None:
    """A small frame, then three that each carry a third of what a batch may: the first three
    go together and the fourth alone, so no stream message nears the transport's limit."""
    gateway_link, stream = link
    third = gateway_pb2.ResolveRecipientsRequest(link_tokens=[b"t" * (MAX_BATCH_BYTES // 3)])
    frames = [resolve(0), *(gateway_pb2.NodeFrame(resolve=third) for _ in range(3))]
    await gateway_link.send_all(frames)
    assert [len(m.batch.frames) if m.HasField("batch") else 1 for m in stream.written] == [3, 1]


async def test_a_sender_that_gives_up_cancels_no_write_and_the_stream_goes_on(link: tuple[GatewayLink, Stream]) -> None:
    """A sender cancelled while its frame is being written (in a call its case system gave up
    on, say): the link's own writer writes on, so the stream (which gRPC cancels whole with a
    cancelled write) and the frames queued behind are untouched."""
    gateway_link, stream = link
    stream.flowing.clear()
    giving_up = asyncio.create_task(gateway_link.send_all([resolve(1)]))
    queued = asyncio.create_task(gateway_link.send_all([resolve(2), resolve(3)]))
    await stream.waiting.wait()  # both sends have begun: the first is being written
    giving_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await giving_up
    stream.flowing.set()
    await queued
    assert not stream.cancelled
    assert _written(stream) == [1, 2, 3]


async def test_a_write_cancelled_as_the_node_stops_leaves_no_sender_waiting(link: tuple[GatewayLink, Stream]) -> None:
    """The link's writer is cancelled mid-write as the link stops (with the other tasks it
    owns): gRPC ends the stream, and the frames queued behind are failed, not left for a
    writer that will never come."""
    gateway_link, stream = link
    stream.flowing.clear()
    writing = asyncio.create_task(gateway_link.send_all([resolve(1)]))
    queued = asyncio.create_task(gateway_link.send_all([resolve(2), resolve(3)]))
    await stream.waiting.wait()  # both sends have begun: the first is being written
    for task in gateway_link._handlers:  # as GatewayLink.run does as it ends
        task.cancel()
    async with asyncio.timeout(10):  # a guard only: each is told at once
        for sender in (writing, queued):
            with pytest.raises(NotConnected):
                await sender
    assert stream.cancelled and stream.written == []


async def test_a_renewal_during_a_write_ends_the_stream_once_what_is_queued_is_written(
    link: tuple[GatewayLink, Stream], federation: LocalFederation
) -> None:
    """The node moves to a renewed certificate while frames are being written: this side of
    the stream is ended after them, not under them, so none is lost to the change."""
    gateway_link, stream = link
    stream.flowing.clear()
    sending = [asyncio.create_task(gateway_link.send_all([resolve(n)])) for n in (1, 2)]
    await stream.waiting.wait()
    await gateway_link.use_tls(federation.node_configs["amh"].tls.read())
    assert stream.ended_after is None and not gateway_link.connected.is_set()
    stream.flowing.set()
    await asyncio.gather(*sending)
    assert stream.ended_after == len(stream.written) and _written(stream) == [1, 2]


class Replies:
    """A stream's reading side: the frames given, then its end."""

    def __init__(self, *frames: gateway_pb2.GatewayFrame) -> None:
        self._frames = list(frames)

    async def read(self) -> gateway_pb2.GatewayFrame | object:
        return self._frames.pop(0) if self._frames else grpc.aio.EOF


async def test_look_ups_asked_at_once_each_take_the_answer_that_names_them(link: tuple[GatewayLink, Stream]) -> None:
    """Two shares asking the gateway at once, on the stream: each look-up goes with an id of
    its own and takes the answer naming it, whichever comes first; nothing of either is kept
    once it is answered."""
    gateway_link, stream = link
    tokens = {bytes([n]) * 32: agency for n, agency in ((1, "csc"), (2, "school"))}
    asking = [asyncio.create_task(gateway_link.resolve([token])) for token in tokens]
    async with asyncio.timeout(10):
        while len(_frames(stream)) < len(asking):
            stream.wrote.clear()
            await stream.wrote.wait()
        answers = [
            gateway_pb2.GatewayFrame(
                resolved=gateway_pb2.ResolveRecipientsResponse(
                    request_id=frame.resolve.request_id,
                    by_token=[gateway_pb2.TokenInvolvement(link_token=token, node_ids=[tokens[token]])],
                )
            )
            for frame in _frames(stream)
            for token in frame.resolve.link_tokens
        ]
        await gateway_link._read(Replies(*reversed(answers)))  # type: ignore[arg-type]  # as far as reading goes
        answered = await asyncio.gather(*asking)
    assert [answer.by_token for answer in answered] == [{token: [agency]} for token, agency in tokens.items()]
    assert gateway_link._asked == {}
