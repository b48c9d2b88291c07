"""R9: a gateway call answered UNAVAILABLE (the gateway restarting, or its store briefly
unwritable) is made again by gRPC itself, within the call's deadline, and takes effect once;
a call a repeat could harm is not repeated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from linkage.clock import ManualClock
from linkage.transport import RETRIED_GATEWAY_CALLS
from linkage.v1 import audit_pb2, gateway_pb2
from tests.harness import make_federation, running

TOKEN = bytes([9]) * 32
if TYPE_CHECKING:  # the stubs' generic; gRPC's own class takes no type arguments
    Handler = grpc.RpcMethodHandler[Any, Any] | None


class RefuseFirst(grpc.aio.ServerInterceptor):
    """Answers the next `times` calls of one gateway method UNAVAILABLE before they reach the
    service, as a gateway that is restarting does; counts the calls that then reach it."""

    def __init__(self, method: str) -> None:
        self.method = f"/linkage.v1.Gateway/{method}"
        self.to_refuse = self.refused = self.passed = 0

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]], details: grpc.HandlerCallDetails
    ) -> Handler:
        if details.method != self.method:
            return await continuation(details)
        if self.refused < self.to_refuse:
            self.refused += 1

            async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is restarting")

            return grpc.unary_unary_rpc_method_handler(refuse)
        self.passed += 1
        return await continuation(details)


async def test_r9_a_subscription_refused_unavailable_twice_is_made_again_and_held_once(tmp_path: Path) -> None:
    refuse = RefuseFirst("Subscribe")
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh",)), clock=clock, interceptors=[refuse]) as cluster:
        amh, gateway = cluster.nodes["amh"], cluster.gateway
        assert amh.link is not None and gateway._db is not None
        refuse.to_refuse, refuse.refused, refuse.passed = 2, 0, 0  # from now on
        assert await amh.link.subscribe([TOKEN]) == 1
        assert (refuse.refused, refuse.passed) == (2, 1)
        rows = await gateway._db.read("SELECT node_id FROM subscriptions WHERE token = ?", (TOKEN,))
        assert rows == [("amh",)]


async def test_r9_a_checkpoint_lodged_is_not_made_again_since_a_repeat_could_be_refused(tmp_path: Path) -> None:
    """A repeat of a lodge whose answer was lost would find the checkpoint held already, and
    be refused: the node hears UNAVAILABLE once, and lodges again at its next checkpoint."""
    refuse = RefuseFirst("LodgeCheckpoint")
    clock = ManualClock()
    async with running(make_federation(tmp_path, clock, nodes=("amh",)), clock=clock, interceptors=[refuse]) as cluster:
        amh = cluster.nodes["amh"]
        assert amh.link is not None
        before, refuse.to_refuse = refuse.refused, 1_000  # every one, from now on
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await amh.link.lodge_checkpoint(audit_pb2.SignedCheckpoint(), 0, [])
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refuse.refused == before + 1
        refuse.to_refuse = refuse.refused  # the node lodges as it stops


def test_every_call_named_for_retries_is_the_gateways() -> None:
    """gRPC ignores a name in the service config that matches no method: a typo would
    quietly turn retries off for that call."""
    methods = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name
    assert set(RETRIED_GATEWAY_CALLS) <= set(methods)
