"""The NodeApi gRPC service for case systems: validation and status mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from linkage import logs
from linkage.reasons import Rejected
from linkage.tokens import TOKEN_LEN
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2
from node.casework import Casework
from node.errors import ApiError, invalid
from node.reception import InboxFeed

MAX_LIST = 500
log = logs.get("node.api")
Context = grpc.aio.ServicerContext[object, object]
T = TypeVar("T")


def _check_actor(actor: summary_pb2.Practitioner) -> None:
    if not actor.id.strip() or not actor.role.strip():
        raise invalid("actor.id and actor.role are required: every call names the practitioner acting")


async def _answer(context: Context, work: Awaitable[T]) -> T:
    try:
        return await work
    except ApiError as exc:
        await context.abort(exc.code, exc.message)
    except Rejected as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"node cannot serve: {exc}")
    raise AssertionError("unreachable")


class NodeApiService(node_api_pb2_grpc.NodeApiServicer):
    def __init__(self, casework: Casework, feed: InboxFeed) -> None:
        self.casework = casework
        self.feed = feed

    async def OpenCase(self, request: node_api_pb2.OpenCaseRequest, context: Context) -> node_api_pb2.OpenCaseResponse:
        async def work() -> node_api_pb2.OpenCaseResponse:
            _check_actor(request.actor)
            return await self.casework.open_case(request)

        return await _answer(context, work())

    async def RecordAssessment(
        self, request: node_api_pb2.RecordAssessmentRequest, context: Context
    ) -> node_api_pb2.RecordAssessmentResponse:
        async def work() -> node_api_pb2.RecordAssessmentResponse:
            _check_actor(request.actor)
            return await self.casework.record_assessment(request)

        return await _answer(context, work())

    async def ShareSummary(
        self, request: node_api_pb2.ShareSummaryRequest, context: Context
    ) -> node_api_pb2.ShareSummaryResponse:
        async def work() -> node_api_pb2.ShareSummaryResponse:
            _check_actor(request.actor)
            if not request.assessment_id:
                raise invalid("assessment_id is required: record the assessment first")
            return await self.casework.share(request)

        return await _answer(context, work())

    async def PreviewShare(
        self, request: node_api_pb2.ShareSummaryRequest, context: Context
    ) -> node_api_pb2.SharePreview:
        async def work() -> node_api_pb2.SharePreview:
            _check_actor(request.actor)
            if not request.assessment_id:
                raise invalid("assessment_id is required: record the assessment first")
            return await self.casework.preview(request)

        return await _answer(context, work())

    async def GetShareStatus(
        self, request: node_api_pb2.ShareStatusRequest, context: Context
    ) -> node_api_pb2.ShareStatus:
        async def work() -> node_api_pb2.ShareStatus:
            _check_actor(request.actor)
            return await self.casework.share_status(request.share_id)

        return await _answer(context, work())

    async def WatchShareStatus(
        self, request: node_api_pb2.ShareStatusRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.ShareStatus]:
        try:
            _check_actor(request.actor)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        outbox = self.casework.outbox
        last: node_api_pb2.ShareStatus | None = None
        while True:
            version = outbox.version
            status = await _answer(context, self.casework.share_status(request.share_id))
            if status != last:
                yield status
                last = status
            if status.settled:
                return
            await outbox.wait_change(version)

    async def WatchDeliveries(
        self, request: node_api_pb2.WatchDeliveriesRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.DeliveryEvent]:
        try:
            _check_actor(request.actor)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        outbox = self.casework.outbox
        after = request.after_seq
        while True:
            version = outbox.version
            events = await self.casework.deliveries(after, MAX_LIST)
            for event in events:
                yield event
                after = event.seq
            if not events:
                await outbox.wait_change(version)

    async def ListReceived(
        self, request: node_api_pb2.ListReceivedRequest, context: Context
    ) -> node_api_pb2.ListReceivedResponse:
        async def work() -> node_api_pb2.ListReceivedResponse:
            _check_actor(request.actor)
            if request.link_token and len(request.link_token) != TOKEN_LEN:
                raise invalid(f"link_token must be {TOKEN_LEN} bytes")
            limit = min(request.limit or 100, MAX_LIST)
            items = await self.casework.received(request.after_seq, limit, request.link_token)
            return node_api_pb2.ListReceivedResponse(items=items)

        return await _answer(context, work())

    async def WatchReceived(
        self, request: node_api_pb2.WatchReceivedRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.ReceivedSummary]:
        try:
            _check_actor(request.actor)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        after = request.after_seq
        while True:
            items = await _answer(context, self.casework.received(after, MAX_LIST))
            for item in items:
                yield item
                after = item.seq
            if not items:
                await self.feed.wait_beyond(after)
