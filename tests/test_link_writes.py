"""A node's writes on its stream to the gateway: frames written together fail together
when the stream goes, and the sender is told once, with no failure left for asyncio to
report as nobody's (an error line in the operators' log)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import grpc
import pytest

from linkage.v1 import gateway_pb2
from node.link import GatewayLink, NotConnected
from tests.harness import LocalFederation


class GoneStream:
    """A stream the gateway has ended: gRPC refuses every write on it."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, message: gateway_pb2.NodeFrame) -> None:
        self.writes += 1
        raise grpc.aio.UsageError("RPC already finished.")


async def _nothing(*_: object) -> None:
    return None


async def test_frames_written_together_on_a_stream_that_went_fail_together_and_all_are_retrieved(
    federation: LocalFederation,
) -> None:
    config = federation.node_configs["amh"]
    link = GatewayLink(
        "amh", "127.0.0.1:1", "gateway", config.tls.read(), on_connect=_nothing, on_frames=_nothing, on_state=_nothing
    )
    stream = GoneStream()
    link._call = stream  # type: ignore[assignment]  # a stream, as far as writing goes
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        frames = [gateway_pb2.NodeFrame(resolve=gateway_pb2.ResolveRecipientsRequest(request_id=n)) for n in (1, 2, 3)]
        with pytest.raises(NotConnected):
            await link.send_all(frames)
        assert stream.writes == 1  # the three went as one batch, and failed as one
        gc.collect()  # asyncio reports a failure nobody retrieved as its future goes
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)
        await link.close()
