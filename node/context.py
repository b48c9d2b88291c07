"""What every casework operation of a node needs, built once at start-up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc

from linkage.clock import Clock
from linkage.directory import DirectoryView, TrustedDirectory
from linkage.reasons import Rejected
from linkage.tokens import LinkageKey
from linkage.v1 import directory_pb2
from node.errors import ApiError
from node.link import GatewayLink, GatewayRefused
from node.messaging import Messenger
from node.outbox import Outbox
from node.policy import PolicyContext
from node.resolver import Resolver
from node.store import Store


@dataclass
class NodeContext:
    """Fixed for the node's life, but for `policy`: a SIGHUP may replace it whole
    (NodeServer.check_policy)."""

    node_id: str
    store: Store
    link: GatewayLink
    outbox: Outbox
    trust: TrustedDirectory
    messenger: Messenger
    linkage_key: LinkageKey
    clock: Clock
    policy: PolicyContext
    resolver: Resolver
    look: Callable[[], Awaitable[None]]  # for a newer directory at the gateway, and take it

    def directory(self) -> DirectoryView:
        try:
            return self.trust.current(self.clock.now_ms())
        except Rejected as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, f"node cannot serve: {exc}") from None

    def me(self) -> directory_pb2.NodeEntry:
        return self.directory().nodes.get(self.node_id, directory_pb2.NodeEntry(node_id=self.node_id))

    def agency(self, node_id: str) -> directory_pb2.NodeEntry:
        return self.directory().nodes.get(node_id, directory_pb2.NodeEntry(node_id=node_id, agency_name=node_id))

    async def resolve(self, tokens: list[bytes]) -> list[str]:
        """Agencies linked to these tokens, or a clear error that nothing was done."""
        try:
            linked = await self.resolver.resolve(tokens)
        except (grpc.aio.AioRpcError, GatewayRefused) as exc:
            raise _not_answered(exc, "nothing was shared") from None
        await self.knowing(linked)
        return linked

    async def discover(self, tokens: list[bytes], nothing: str) -> dict[bytes, list[str]]:
        """For each token, the other agencies linked to it, or a clear error saying `nothing`
        (what the call did not do)."""
        try:
            linked = await self.link.discover(tokens)
        except grpc.aio.AioRpcError as exc:
            raise _not_answered(exc, nothing) from None
        await self.knowing(n for nodes in linked.values() for n in nodes)
        return linked

    async def knowing(self, nodes: Iterable[str]) -> None:
        """Take the gateway's newer directory first if it names an agency ours does not (one
        enrolled since this node last took one): else what is sealed for it now is not sent."""
        view = self.trust.view
        if view is not None and any(n not in view.nodes for n in nodes):
            await self.look()

    def new_id(self) -> str:
        """A new id for something this node makes, after every one it made before."""
        return self.messenger.ids.make(self.clock.now_ms())

    async def changed(self) -> None:
        self.outbox.wake.set()
        await self.outbox.changed()


def _not_answered(exc: grpc.aio.AioRpcError | GatewayRefused, nothing: str) -> ApiError:
    """The gateway's refusal to say who is linked to a family, as a status and a line the
    case system can act on."""
    code = exc.code if isinstance(exc, GatewayRefused) else exc.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:  # asking again will not change it
        return ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the gateway does not link this node to all of these people (was one removed from the case, "
            f"or the case closed?); {nothing}",
        )
    busy = code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED if busy else grpc.StatusCode.UNAVAILABLE,
        f"cannot reach the gateway to find the agencies linked to this family ({code.name}); {nothing}, try again",
    )
