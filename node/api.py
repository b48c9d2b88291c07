"""The NodeApi gRPC service for case systems: validation and status mapping.
Each call names the practitioner acting; the work is done by the casework modules."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from linkage import logs
from linkage.reasons import Rejected
from linkage.refusals import bounded
from linkage.tokens import TOKEN_LEN
from linkage.v1 import node_api_pb2, node_api_pb2_grpc, summary_pb2
from linkage.writability import unwritable
from node.case_finder import find_cases
from node.cases import Cases
from node.challenges import Challenges
from node.chronology import Chronologies
from node.closures import Closures
from node.due import Due
from node.errors import ApiError, invalid
from node.follow_up import record_follow_up
from node.inbox import Inbox
from node.outbox import Outbox
from node.own_assessments import OwnAssessments
from node.queues import delivery_queues
from node.reception import InboxFeed
from node.requests import Requests
from node.sharing import Sharing

MAX_LIST = 500
MAX_SEQ = 2**63 - 1
MAX_ACTOR_FIELD = 256  # every audit entry a call writes carries its actor
SERVICE_NAME = node_api_pb2.DESCRIPTOR.services_by_name["NodeApi"].full_name
log = logs.get("node.api")
Context = grpc.aio.ServicerContext[object, object]
T = TypeVar("T")


async def _after(seq: int) -> int:
    """A resume point a person can have been given: SQLite's integers end at 2**63 - 1."""
    if seq > MAX_SEQ:
        raise invalid(f"after_seq {seq} is beyond any sequence number this node gives; resume from the last one seen")
    return seq


def _check_actor(actor: summary_pb2.Practitioner) -> None:
    if not actor.id.strip() or not actor.role.strip():
        raise invalid("actor.id and actor.role are required: every call names the practitioner acting")
    if max(len(actor.id), len(actor.name), len(actor.role)) > MAX_ACTOR_FIELD:
        raise invalid(f"actor.id, actor.name and actor.role are at most {MAX_ACTOR_FIELD} characters each")


async def _answer(context: Context, actor: summary_pb2.Practitioner, work: Callable[[], Awaitable[T]]) -> T:
    """Run one call: check the actor, then map failures to a status and a message a person can act on."""
    try:
        _check_actor(actor)
        return await work()
    except ApiError as exc:
        await context.abort(exc.code, bounded(exc.message))
    except Rejected as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, bounded(f"node cannot serve: {exc}"))
    except Exception as exc:
        if (error := unwritable(exc)) is None:
            raise  # a defect: logged by _logged, and the caller sees UNKNOWN
        await context.abort(*_unwritable_status(error))
    raise AssertionError("unreachable")


def _unwritable_status(error: str) -> tuple[grpc.StatusCode, str]:
    """The node's store refused the write: nothing of the call stands, and only agency IT can
    make it work again (gRPC names a full file system as RESOURCE_EXHAUSTED)."""
    nothing = "nothing of this call was recorded or sent"
    if error == "SQLITE_FULL":
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"the node's disk is full ({error}): {nothing}; ask agency IT to free space, then call again"
        )
    return grpc.StatusCode.UNAVAILABLE, (
        f"the node's store cannot be written ({error}): {nothing}; ask agency IT to fix its disk, then call again"
    )


def add_to_server(service: NodeApiService, server: grpc.aio.Server) -> None:
    """Serve `service`. Chronology's handler has no response serialiser: its answer is
    assembled from entries stored serialised, and is sent as it is."""
    node_api_pb2_grpc.add_NodeApiServicer_to_server(service, server)
    chronology: grpc.RpcMethodHandler[node_api_pb2.ChronologyRequest, bytes] = grpc.unary_unary_rpc_method_handler(
        service.Chronology, request_deserializer=node_api_pb2.ChronologyRequest.FromString
    )
    # Registered handlers are looked up by method name, so this one replaces the generated one.
    server.add_registered_method_handlers(SERVICE_NAME, {"Chronology": chronology})


Method = Callable[[Any, Any, Context], Awaitable[Any]]


Stream = Callable[[Any, Any, Context], AsyncIterator[Any]]


@contextlib.contextmanager
def _logged(name: str, context: Context) -> Iterator[None]:
    """A call refused is logged with its method and status code, never its message (which
    may quote what the caller sent): agency IT can see what fails, and how often. A watcher
    that goes away cancels its watch, which is neither, even when gRPC says so by failing the
    answer it was writing."""
    try:
        yield
    except grpc.aio.AbortError:  # refused by _answer, with its status set
        code = context.code()
        log.info("api.refused", method=name, code=code.name if isinstance(code, grpc.StatusCode) else str(code))
        raise
    except Exception as exc:
        if context.cancelled():  # the caller went (its deadline, say) as an answer was written to it
            log.info("api.caller_gone", method=name, error=type(exc).__name__)
        else:
            log.error("api.failed", method=name, error=type(exc).__name__)
        raise


def _outcome_logged(name: str, method: Method) -> Method:
    @functools.wraps(method)
    async def call(self: Any, request: Any, context: Context) -> Any:
        with _logged(name, context):
            return await method(self, request, context)

    return call


def _stream_logged(name: str, method: Stream) -> Stream:
    @functools.wraps(method)
    async def call(self: Any, request: Any, context: Context) -> AsyncIterator[Any]:
        with _logged(name, context):  # refused at its start or at any later answer
            async for item in method(self, request, context):
                yield item

    return call


def _outcomes_logged(cls: type[T]) -> type[T]:
    for method in node_api_pb2.DESCRIPTOR.services_by_name["NodeApi"].methods:
        if method.client_streaming:
            raise TypeError(f"{method.name}: a client stream would need its own wrapper")
        wrap = _stream_logged if method.server_streaming else _outcome_logged
        setattr(cls, method.name, wrap(method.name, getattr(cls, method.name)))
    return cls


@_outcomes_logged
class NodeApiService(node_api_pb2_grpc.NodeApiServicer):
    def __init__(
        self,
        cases: Cases,
        sharing: Sharing,
        requests: Requests,
        inbox: Inbox,
        chronology: Chronologies,
        outbox: Outbox,
        feed: InboxFeed,
    ) -> None:
        self.cases = cases
        self.closures = Closures(requests.ctx, cases)
        self.sharing = sharing
        self.requests = requests
        self.challenges = Challenges(requests.ctx, requests)
        self.due = Due(requests.ctx)
        self.assessments = OwnAssessments(requests.ctx)
        self.inbox = inbox
        self.chronology = chronology
        self.outbox = outbox
        self.feed = feed

    # -- cases -------------------------------------------------------------------

    async def OpenCase(self, request: node_api_pb2.OpenCaseRequest, context: Context) -> node_api_pb2.OpenCaseResponse:
        return await _answer(context, request.actor, lambda: self.cases.open_case(request))

    async def AddPerson(
        self, request: node_api_pb2.AddPersonRequest, context: Context
    ) -> node_api_pb2.OpenCaseResponse:
        return await _answer(context, request.actor, lambda: self.cases.add_person(request))

    async def RemovePerson(
        self, request: node_api_pb2.RemovePersonRequest, context: Context
    ) -> node_api_pb2.OpenCaseResponse:
        return await _answer(context, request.actor, lambda: self.cases.remove_person(request))

    async def FindCases(self, request: node_api_pb2.FindCasesRequest, context: Context) -> node_api_pb2.CaseList:
        return await _answer(context, request.actor, lambda: find_cases(self.cases, request))

    async def DiscoverInvolvement(
        self, request: node_api_pb2.CaseRequest, context: Context
    ) -> node_api_pb2.InvolvementResponse:
        return await _answer(context, request.actor, lambda: self.cases.discover(request))

    async def ProposeClosure(
        self, request: node_api_pb2.ProposeClosureRequest, context: Context
    ) -> node_api_pb2.ClosureStatus:
        return await _answer(context, request.actor, lambda: self.closures.propose_closure(request))

    async def RespondToClosure(
        self, request: node_api_pb2.RespondToClosureRequest, context: Context
    ) -> node_api_pb2.RespondToClosureResponse:
        return await _answer(context, request.actor, lambda: self.closures.respond_to_closure(request))

    async def GetClosure(self, request: node_api_pb2.CaseRequest, context: Context) -> node_api_pb2.ClosureStatus:
        return await _answer(context, request.actor, lambda: self.closures.closure_status(request.case_id))

    async def CloseCase(self, request: node_api_pb2.CloseCaseRequest, context: Context) -> node_api_pb2.ClosureStatus:
        return await _answer(context, request.actor, lambda: self.closures.close_case(request))

    async def RecordAssessment(
        self, request: node_api_pb2.RecordAssessmentRequest, context: Context
    ) -> node_api_pb2.RecordAssessmentResponse:
        return await _answer(context, request.actor, lambda: self.cases.record_assessment(request))

    async def ListAssessments(self, request: node_api_pb2.CaseRequest, context: Context) -> node_api_pb2.Assessments:
        return await _answer(context, request.actor, lambda: self.assessments.list_assessments(request))

    # -- sharing -----------------------------------------------------------------

    async def ShareSummary(
        self, request: node_api_pb2.ShareSummaryRequest, context: Context
    ) -> node_api_pb2.ShareSummaryResponse:
        async def work() -> node_api_pb2.ShareSummaryResponse:
            if not request.assessment_id:
                raise invalid("assessment_id is required: record the assessment first")
            return await self.sharing.share(request)

        return await _answer(context, request.actor, work)

    async def PreviewShare(
        self, request: node_api_pb2.ShareSummaryRequest, context: Context
    ) -> node_api_pb2.SharePreview:
        async def work() -> node_api_pb2.SharePreview:
            if not request.assessment_id:
                raise invalid("assessment_id is required: record the assessment first")
            return await self.sharing.preview(request)

        return await _answer(context, request.actor, work)

    async def WithdrawSummary(
        self, request: node_api_pb2.WithdrawSummaryRequest, context: Context
    ) -> node_api_pb2.ShareSummaryResponse:
        return await _answer(context, request.actor, lambda: self.sharing.withdraw(request))

    async def GetShareStatus(
        self, request: node_api_pb2.ShareStatusRequest, context: Context
    ) -> node_api_pb2.ShareStatus:
        return await _answer(context, request.actor, lambda: self.sharing.share_status(request.share_id))

    async def WatchShareStatus(
        self, request: node_api_pb2.ShareStatusRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.ShareStatus]:
        last: node_api_pb2.ShareStatus | None = None
        while True:
            version = self.outbox.version
            status = await _answer(context, request.actor, lambda: self.sharing.share_status(request.share_id))
            if status != last:
                yield status
                last = status
            if status.settled:
                return
            await self.outbox.wait_change(version)

    async def WatchDeliveries(
        self, request: node_api_pb2.WatchDeliveriesRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.DeliveryEvent]:
        after = await _answer(context, request.actor, lambda: _after(request.after_seq))
        while True:
            version = self.outbox.version
            events = await _answer(context, request.actor, functools.partial(self.sharing.deliveries, after, MAX_LIST))
            for event in events:
                yield event
                after = event.seq
            if not events:
                await self.outbox.wait_change(version)

    # -- requests ----------------------------------------------------------------

    async def AskClarification(
        self, request: node_api_pb2.AskClarificationRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.requests.ask_clarification(request))

    async def AnswerClarification(
        self, request: node_api_pb2.AnswerClarificationRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.requests.answer_clarification(request))

    async def RequestInformation(
        self, request: node_api_pb2.RequestInformationRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.requests.request_information(request))

    async def RespondToInformationRequest(
        self, request: node_api_pb2.InformationReplyRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.requests.respond_to_information_request(request))

    async def ListInformationRequests(
        self, request: node_api_pb2.CaseRequest, context: Context
    ) -> node_api_pb2.InformationRequests:
        return await _answer(context, request.actor, lambda: self.requests.list_requests(request))

    async def RaiseChallenge(
        self, request: node_api_pb2.RaiseChallengeRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.challenges.raise_challenge(request))

    async def RespondToChallenge(
        self, request: node_api_pb2.ChallengeReplyRequest, context: Context
    ) -> node_api_pb2.MessageSent:
        return await _answer(context, request.actor, lambda: self.challenges.respond(request))

    async def ListChallenges(self, request: node_api_pb2.CaseRequest, context: Context) -> node_api_pb2.Challenges:
        return await _answer(context, request.actor, lambda: self.challenges.list_challenges(request))

    async def ListDue(self, request: node_api_pb2.DueRequest, context: Context) -> node_api_pb2.DueItems:
        return await _answer(context, request.actor, lambda: self.due.list_due(request))

    async def ListDeliveryQueues(
        self, request: node_api_pb2.DeliveryQueuesRequest, context: Context
    ) -> node_api_pb2.DeliveryQueues:
        return await _answer(context, request.actor, lambda: delivery_queues(self.due.ctx))

    async def RecordFollowUp(
        self, request: node_api_pb2.FollowUpRequest, context: Context
    ) -> node_api_pb2.DeliveryStatus:
        return await _answer(context, request.actor, lambda: record_follow_up(self.due.ctx, request))

    # -- inbox -------------------------------------------------------------------

    async def OpenReceived(
        self, request: node_api_pb2.OpenReceivedRequest, context: Context
    ) -> node_api_pb2.ReceivedSummary:
        return await _answer(context, request.actor, lambda: self.inbox.open(request))

    async def Chronology(  # type: ignore[override]  # answers serialised; see add_to_server
        self, request: node_api_pb2.ChronologyRequest, context: Context
    ) -> bytes:
        return await _answer(
            context,
            request.actor,
            lambda: self.chronology.assemble(request.case_id, request.actor, request.page_size, request.page_token),
        )

    async def ListReceived(
        self, request: node_api_pb2.ListReceivedRequest, context: Context
    ) -> node_api_pb2.ListReceivedResponse:
        async def work() -> node_api_pb2.ListReceivedResponse:
            if request.link_token and len(request.link_token) != TOKEN_LEN:
                raise invalid(f"link_token must be {TOKEN_LEN} bytes")
            limit = min(request.limit or 100, MAX_LIST)
            after = await _after(request.after_seq)
            items = await self.inbox.received(request.actor, "ListReceived", after, limit, request.link_token)
            return node_api_pb2.ListReceivedResponse(items=items)

        return await _answer(context, request.actor, work)

    async def WatchReceived(
        self, request: node_api_pb2.WatchReceivedRequest, context: Context
    ) -> AsyncIterator[node_api_pb2.ReceivedSummary]:
        after = await _answer(context, request.actor, lambda: _after(request.after_seq))
        while True:
            # Every row up to here is committed: it is listed below, or never will be (erased
            # as it came, or since), so a look that finds nothing waits from here on.
            published = self.feed.last_seq
            watch = functools.partial(self.inbox.received, request.actor, "WatchReceived", after, MAX_LIST)
            items = await _answer(context, request.actor, watch)
            for item in items:
                yield item
                after = item.seq
            if not items:
                after = max(after, published)
                await self.feed.wait_beyond(after)
