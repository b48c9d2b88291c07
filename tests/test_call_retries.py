"""R9: a gateway call answered UNAVAILABLE (the gateway restarting, or its store briefly
unwritable) is made again by gRPC itself, within the call's deadline, and takes effect once;
a call a repeat could harm is not repeated."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from linkage import stories
from linkage.clock import ManualClock, SystemClock
from linkage.transport import RETRIED_GATEWAY_CALLS, RETRY_ATTEMPTS
from linkage.v1 import audit_pb2, gateway_pb2, node_api_pb2
from node.link import Subscribed
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    audit_events,
    make_federation,
    running,
    store_refuses,
    wait_count,
)
from tests.test_federation import _case_id, open_case
from tests.test_workflows import planned_closure

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
        assert (await amh.link.subscribe([TOKEN])).added == 1
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


async def test_an_unsubscription_the_gateway_does_not_take_is_made_again_by_the_node(tmp_path: Path) -> None:
    """A case closed while the gateway refuses the end of its people's subscriptions (past
    gRPC's own retries) is closed all the same; the subscriptions to end are recorded with
    the close, so the node ends them once the gateway answers, even after a restart: it is
    not left linked to a family it has closed."""
    refuse = RefuseFirst("Unsubscribe")
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh",)), interceptors=[refuse]) as cluster:
        await open_case(cluster, "amh", stories.think_family_people())
        case_id = await _case_id(cluster, "amh")
        await cluster.api("amh").ProposeClosure(planned_closure(PRACTITIONER, case_id))  # nobody else to alert
        assert cluster.gateway._index is not None and cluster.gateway._index.count("amh") == 2
        refuse.to_refuse = 1_000_000  # every call, from now on
        closed = await cluster.api("amh").CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert closed.state == "closed" and refuse.refused >= RETRY_ATTEMPTS  # every attempt gRPC made
        await cluster.stop_node("amh")  # its resubscriber still trying
        assert cluster.gateway._index.count("amh") == 2

        refuse.to_refuse = refuse.refused  # the gateway takes them from now on
        amh = await cluster.start_node("amh")
        await wait_count(amh, "SELECT count(*) FROM audit WHERE event = 'subscription.removed'", (), 1)
        (taken_back,) = await audit_events(amh, "subscription.removed")
        assert taken_back["detail"] == {"removed": 2, "deferred": True} and len(taken_back["tokens"]) == 2
        assert cluster.gateway._index.count("amh") == 0
        assert amh.store is not None and await amh.store.fetchall("SELECT token FROM subscriptions_to_end") == []


class BeforeUnsubscribe(grpc.aio.ServerInterceptor):
    """Runs `first` once, as the gateway receives the next Unsubscribe, before the call goes on."""

    def __init__(self) -> None:
        self.first: Callable[[], Awaitable[object]] | None = None

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]], details: grpc.HandlerCallDetails
    ) -> Handler:
        if details.method == "/linkage.v1.Gateway/Unsubscribe" and self.first is not None:
            first, self.first = self.first, None
            await first()
        return await continuation(details)


async def test_a_person_named_by_a_case_opened_while_another_closes_stays_subscribed(tmp_path: Path) -> None:
    """The close reads who no open case names, then ends their subscriptions; a case opened
    between the two, naming the same person, subscribed them before the end reached the
    gateway. The node sees the case as it finishes and subscribes them again: it is not left
    unlinked from a family it has an open case about."""
    hook = BeforeUnsubscribe()
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh",)), interceptors=[hook]) as cluster:
        parent, child = await open_case(cluster, "amh", stories.think_family_people())
        case_id = await _case_id(cluster, "amh")
        await cluster.api("amh").ProposeClosure(planned_closure(PRACTITIONER, case_id))
        hook.first = lambda: open_case(cluster, "amh", stories.think_family_people()[1:], case_ref="case-2")
        await cluster.api("amh").CloseCase(node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id))
        assert hook.first is None  # the case was opened while the close was ending the subscriptions
        index = cluster.gateway._index
        assert index is not None and index.is_subscribed("amh", child) and not index.is_subscribed("amh", parent)


async def test_a_case_closed_while_its_store_refuses_ending_the_subscriptions_is_closed_and_they_end_later(
    tmp_path: Path,
) -> None:
    """The close is committed before the subscriptions are ended: a failure then is not the
    close's (the call answers with the case closed), and the node's resubscriber ends them
    once the store takes it, rather than at its next connection."""
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh",))) as cluster:
        await open_case(cluster, "amh", stories.think_family_people())
        case_id = await _case_id(cluster, "amh")
        await cluster.api("amh").ProposeClosure(planned_closure(PRACTITIONER, case_id))  # nobody else to alert
        amh = cluster.nodes["amh"]
        assert amh.store is not None
        with store_refuses(amh, "DELETE", "subscriptions_to_end"):  # the write that records them ended
            closed = await cluster.api("amh").CloseCase(
                node_api_pb2.CloseCaseRequest(actor=PRACTITIONER, case_id=case_id)
            )
            assert closed.state == "closed"
        await wait_count(amh, "SELECT count(*) FROM audit WHERE event = 'subscription.removed'", (), 1)
        (ended,) = await audit_events(amh, "subscription.removed")
        assert ended["detail"]["deferred"] and len(ended["tokens"]) == 2
        assert await amh.store.fetchall("SELECT token FROM subscriptions_to_end") == []
        assert cluster.gateway._index is not None and cluster.gateway._index.count("amh") == 0


async def test_a_subscription_put_off_while_the_node_asserts_the_others_is_made_by_its_next_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """A case opened while the node's resubscriber was asserting its subscriptions (after an
    end the gateway did not take, say), and the gateway refused the new case's. That pass had
    read the open cases before the new one was opened; as it ended, it took the node to be in
    step with the gateway and cleared its call for another: the new case's people were never
    subscribed (nothing shared about them reached the node), and the notice that the node had
    joined them was dropped (PERMISSION_DENIED: not subscribed). Now a subscription put off
    during a pass is made by the next one, and the notice goes once it is."""
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))) as cluster:
        family = stories.think_family_people()
        await open_case(cluster, "amh", family)  # amh is linked to them: csc's notice has somewhere to go
        csc = cluster.nodes["csc"]
        subscribe, opened, tokens = csc.ctx.link.subscribe, asyncio.Event(), list[bytes]()

        async def a_case_opened_during_the_pass(asked: Iterable[bytes]) -> Subscribed:
            if not opened.is_set() and not tokens:  # the pass's own, of the open cases as it read them
                tokens.extend(await open_case(cluster, "csc", family))
                opened.set()
            elif not opened.is_set():  # the new case's, meanwhile: the gateway restarting, say
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "")
            return await subscribe(asked)

        monkeypatch.setattr(csc.ctx.link, "subscribe", a_case_opened_during_the_pass)
        csc.cases.ending_due()  # the resubscriber's pass
        async with asyncio.timeout(15):
            await opened.wait()
            await csc.cases.in_sync.wait()
            await wait_count(csc, "SELECT COUNT(*) = 0 FROM notices_to_send", (), 1)  # the notice sent (or dropped)
        index = cluster.gateway._index
        assert index is not None and all(index.is_subscribed("csc", token) for token in tokens)
    assert captured_logs.records("subscribe.deferred") and not captured_logs.records("involvement.notice_unsendable")


async def test_a_subscription_ended_while_the_node_asserts_the_others_is_not_made_again_by_that_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person taken out of a case while the node's resubscriber was asserting its
    subscriptions (as it reconnects to a gateway, say): their subscription was ended, then the
    pass, which had read the open cases before, made it again; and as the end had been made,
    nothing was left to end it. The gateway went on routing to the node what others shared
    about someone it no longer works with. Now a pass during which a subscription was ended
    asks the gateway what it holds, and ends what no open case names."""
    async with running(make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))) as cluster:
        parent, child = await open_case(cluster, "csc", stories.think_family_people())
        csc = cluster.nodes["csc"]
        case_id = await _case_id(cluster, "csc")
        subscribe, removed = csc.ctx.link.subscribe, asyncio.Event()

        async def someone_taken_out_during_the_pass(asked: Iterable[bytes]) -> Subscribed:
            if not removed.is_set():  # the pass's own, of the open cases as it read them
                await cluster.api("csc").RemovePerson(
                    node_api_pb2.RemovePersonRequest(actor=PRACTITIONER, case_id=case_id, link_token=child)
                )
                removed.set()
            return await subscribe(asked)

        monkeypatch.setattr(csc.ctx.link, "subscribe", someone_taken_out_during_the_pass)
        csc.cases.in_sync.clear()
        csc.cases.ending_due()  # the resubscriber's pass
        async with asyncio.timeout(15):
            await removed.wait()
            await csc.cases.in_sync.wait()
        index = cluster.gateway._index
        assert index is not None and index.is_subscribed("csc", parent)
        assert not index.is_subscribed("csc", child)
