"""A gateway that is not what it should be: it holds the gateway's own certificate and key,
so a node dials it as it dials the gateway, and every answer and frame it gives is garbage
built from the contracts (tests/api_garbler.py), with the node's own message ids, resolve
request ids, node ids and link tokens mixed in so that it reaches past the first look-up.

The gateway holds no content and no key of a node (design.md §1), and the node takes nothing
it says on trust: whatever it is told, each call of its API answers with a status a person
can act on, nothing it holds is half-written or lost, and once the real gateway is back it
shares and delivers as before."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from linkage import logs, stories
from linkage.frames import MAX_BATCH_FRAMES, unbatch
from linkage.ids import is_node_id
from linkage.transport import MAX_MESSAGE_BYTES, TlsFiles, api_channel
from linkage.v1 import audit_pb2, envelope_pb2, gateway_pb2, node_api_pb2
from node import link
from tests.api_garbler import Garbler
from tests.harness import PRACTITIONER, CapturedLogs, LocalFederation, audit_events, running
from tests.test_api_garbage import (
    GATEWAY,
    NODE_API,
    SEED,
    _call_all,
    _every_workflow_under_way,
    _ids_by_column,
    _known,
    _requests,
    _shares_and_delivers,
    _valid,
    _whole,
)
from tests.test_delivery import share
from tests.test_federation import _case_id, open_case

FRAMES_PER_STREAM = 300  # then the stream ends, and the node opens another
STREAMS = 3
ABORTED = 0.1  # of the unary calls: refused with any status, the rest answered with garbage
# Statuses a gateway may end a call with, those no real one would among them.
STATUSES = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
# Errors a node logs of what the gateway did, as it should: not defects.
SAID_OF_THE_GATEWAY = {"checkpoint.cosignature_refused", "checkpoint.diverged", "gateway.protocol_error"}
ACK_FIELDS = frozenset({"recipient_node", "status", "reason", "busy_scope", "retry_after_ms"})


class HostileGateway:
    """The Gateway service on loopback, over mTLS with the gateway's own certificate, answering
    everything with garbage (or with what it is `told`)."""

    def __init__(self, garbler: Garbler, tls: TlsFiles, told: dict[str, Message] | None = None) -> None:
        """`told`: instead of garbage, answer each call by its method's name with this (an empty
        answer if not named), and each look-up on the stream with ResolveRecipients's."""
        self.garbler, self.rng = garbler, garbler.rng
        self.told = told
        self.server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in GATEWAY.methods:
            request, response = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
            serialise: Any = response.SerializeToString
            if method.client_streaming:
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    self._connect, request_deserializer=request.FromString, response_serializer=serialise
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    functools.partial(self._unary, method.name, response),
                    request_deserializer=request.FromString,
                    response_serializer=serialise,
                )
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GATEWAY.full_name, handlers),))
        self.port = self.server.add_secure_port("127.0.0.1:0", tls.server_credentials())
        self.message_ids: list[str] = []  # of what the node sent through it
        self.streams = 0
        self.streams_done = asyncio.Event()
        self.calls: dict[str, int] = {}

    async def _unary(
        self, name: str, response: type[Message], request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Message:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.told is not None:
            return self.told.get(name) or response()
        if self.rng.random() < ABORTED:
            await context.abort(self.rng.choice(STATUSES), self.rng.choice(["", "x" * 1_000, "a\u202eb", "garbage"]))
        return self.garbler.message(response)

    async def _connect(
        self, frames: AsyncIterator[gateway_pb2.NodeFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Reads what the node writes, for its ids; writes FRAMES_PER_STREAM frames of garbage,
        answering each look-up the node asks on the stream (else it would wait for one), and
        ends the stream."""
        asked: asyncio.Queue[int] = asyncio.Queue()

        async def read() -> None:
            async for frame in frames:
                for one in unbatch(frame):
                    if one.HasField("send"):
                        routing = envelope_pb2.RoutingHeader.FromString(one.send.routing)
                        self.message_ids.append(routing.message_id)
                    elif one.HasField("resolve"):
                        asked.put_nowait(one.resolve.request_id)

        reader = asyncio.create_task(read())
        try:
            while self.told is not None:
                await context.write(gateway_pb2.GatewayFrame(resolved=self._resolved(await asked.get())))
            for _ in range(FRAMES_PER_STREAM):
                while not asked.empty():
                    await context.write(gateway_pb2.GatewayFrame(resolved=self._resolved(asked.get_nowait())))
                while (frame := self._frame()).ByteSize() > MAX_MESSAGE_BYTES:
                    pass  # larger, the node's gRPC refuses it and ends the stream (S8)
                await context.write(frame)
        except Exception:  # the node ended the stream (gRPC says so in a private type): done
            return
        finally:
            reader.cancel()
            self.streams += 1
            if self.streams >= STREAMS:
                self.streams_done.set()

    def _resolved(self, request_id: int) -> gateway_pb2.ResolveRecipientsResponse:
        answer = gateway_pb2.ResolveRecipientsResponse()
        told = (self.told or {}).get("ResolveRecipients") or self.garbler.message(type(answer))
        assert isinstance(told, gateway_pb2.ResolveRecipientsResponse)
        answer.CopyFrom(told)
        answer.request_id = request_id
        return answer

    def _frame(self, in_batch: bool = False) -> gateway_pb2.GatewayFrame:
        """One frame: an answer about something the node sent, with any status, or any other frame."""
        roll = self.rng.random()
        if roll < 0.3 and self.message_ids:
            ack = self.garbler.spoil(gateway_pb2.SendAck(message_id=self.rng.choice(self.message_ids)), 3, ACK_FIELDS)
            assert isinstance(ack, gateway_pb2.SendAck)
            if self.rng.random() < 0.3:  # a status this node's contract does not know
                ack.status = gateway_pb2.SendStatus.ValueType(self.rng.choice([5, 99, -1]))
            return gateway_pb2.GatewayFrame(send_ack=ack)
        if roll < 0.4 and not in_batch:
            frames = [self._frame(in_batch=True) for _ in range(self.rng.choice([1, 2, 5, 64]))]
            return gateway_pb2.GatewayFrame(batch=gateway_pb2.GatewayFrames(frames=frames))
        frame = self.garbler.message(gateway_pb2.GatewayFrame)
        assert isinstance(frame, gateway_pb2.GatewayFrame)
        if frame.HasField("batch"):  # a batch within a batch is a protocol error, refused whole
            frame.ClearField("batch")
        return frame

    async def __aenter__(self) -> HostileGateway:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(grace=0)


async def test_a_gateway_that_is_not_what_it_should_be_leaves_a_node_whole_and_answering(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    async with running(federation) as cluster:
        await _every_workflow_under_way(cluster)
        known_text, known_bytes = await _known(cluster)
        garbler = Garbler(random.Random(SEED + 7), known_text, known_bytes)
        rng = random.Random(SEED + 8)
        await cluster.stop_node("amh")
        async with HostileGateway(garbler, federation.gateway_config.tls) as hostile:
            amh = await cluster.start_node("amh", gateway_port=hostile.port)
            ids = await _ids_by_column(amh)
            channel = cluster.closes(api_channel(amh.config.api_socket))
            valid = functools.partial(_valid, garbler=garbler, ids=ids)
            for method in NODE_API.methods:
                await _call_all(channel, method, _requests(garbler, rng, method, valid))
            await hostile.streams_done.wait()
            await cluster.stop_node("amh")
        assert len(hostile.calls) >= 3, hostile.calls  # it was asked more than the directory
        amh = await cluster.start_node("amh")
        await _whole(amh)
        # Nothing it was told made it address anything but what could be an agency (one the
        # directory does not name is recorded as not sent, as for a gateway's newer directory).
        assert amh.store is not None
        recipients = {r for (r,) in await amh.store.fetchall("SELECT recipient FROM outbox")}
        assert all(is_node_id(r) and r != "amh" for r in recipients), recipients
        await _shares_and_delivers(cluster)
    logged = [e for e in captured_logs.records() if not _the_stand_in_s_own(e)]
    # No error but what the node says of the gateway: asyncio's and gRPC's among them (python.log),
    # such as a failure nobody retrieved; and nothing the gateway sent, at length.
    errors = [e for e in logged if e["level"] in ("error", "critical") and e["event"] not in SAID_OF_THE_GATEWAY]
    assert not errors, errors[:5]
    assert not [e for e in logged if len(json.dumps(e)) > 2_000]


def _the_stand_in_s_own(entry: dict[str, Any]) -> bool:
    """What gRPC says, in this process, of a stand-in gateway's call that the node left."""
    return entry["event"] == "python.log" and "/linkage.v1.Gateway/" in entry["message"]


async def test_a_gateway_that_names_what_could_be_no_agency_as_linked_is_not_believed(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """Asked who else is linked to a family, a gateway that is not what it should be names
    this node itself, ids no agency could have (a path, 5,000 characters, a NUL, capitals)
    and, for a family nobody asked about, another agency. amh shares with, and lists as
    involved, only the agency that could be one; the rest is left out and said."""
    family = stories.think_family_people()
    async with running(federation) as cluster:
        tokens = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        await cluster.stop_node("amh")
        lies = [
            gateway_pb2.TokenInvolvement(
                link_token=tokens[0], node_ids=["csc", "amh", "../../x", "x" * 5_000, "\x00", "Csc"]
            ),
            gateway_pb2.TokenInvolvement(link_token=bytes(32), node_ids=["school"]),
        ]
        told: dict[str, Message] = {
            "ResolveRecipients": gateway_pb2.ResolveRecipientsResponse(by_token=lies),
            "DiscoverInvolvement": gateway_pb2.DiscoverInvolvementResponse(involvement=lies),
        }
        async with HostileGateway(Garbler(random.Random(SEED)), federation.gateway_config.tls, told) as hostile:
            amh = await cluster.start_node("amh", gateway_port=hostile.port)
            api = cluster.api("amh")
            case_id = await _case_id(cluster, "amh")
            involved = await api.DiscoverInvolvement(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case_id))
            recorded = await api.RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=PRACTITIONER, case_id=case_id, assessment=stories.parent_risk_change(tokens[0], tokens[-1])
                )
            )
            shared = await api.ShareSummary(
                node_api_pb2.ShareSummaryRequest(
                    actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
                )
            )
            assert amh.store is not None
            recipients = {r for (r,) in await amh.store.fetchall("SELECT recipient FROM outbox")}
    assert [r.node_id for r in shared.recipients] == ["csc"] and recipients == {"csc"}
    assert {a.node_id for a in involved.agencies} == {"csc"}
    assert {e["left_out"] for e in captured_logs.records("gateway.answer_malformed")} == {6}


async def test_a_witness_that_says_it_holds_a_longer_log_than_this_node_signed_is_not_believed(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """A node whose witness holds a longer log than its own was put back from a copy, and asks
    the other agencies for what it lost; only its own signature can say so. Asked what it holds,
    a gateway that is not what it should be answers with a checkpoint of a million entries
    signed by nobody, then with bytes that are no checkpoint: amh lodges nothing, asks nobody
    for anything, and says why; with the real gateway, it lodges as before."""
    unsigned = audit_pb2.Checkpoint(node_id="amh", key_id="k1", tree_size=1_000_000).SerializeToString()
    answers = [
        audit_pb2.SignedCheckpoint(checkpoint=unsigned, signature=bytes(64)),
        audit_pb2.SignedCheckpoint(checkpoint=b"\xff"),
    ]
    async with running(federation, nodes=("csc",)) as cluster:
        amh = await cluster.start_node("amh")
        await open_case(cluster, "amh", stories.think_family_people())
        await cluster.stop_node("amh")
        for latest in answers:
            told: dict[str, Message] = {"GetCheckpoints": gateway_pb2.WitnessedCheckpoints(latest=latest)}
            async with HostileGateway(Garbler(random.Random(SEED)), federation.gateway_config.tls, told) as hostile:
                amh = await cluster.start_node("amh", gateway_port=hostile.port)
                assert not await amh.checkpoints.lodge()
                await cluster.stop_node("amh")
            assert hostile.calls.get("LodgeCheckpoint") is None
        amh = await cluster.start_node("amh")
        assert await amh.checkpoints.lodge()
        assert amh.store is not None
        found = await amh.store.fetchall("SELECT seq FROM audit WHERE event = 'store.restored'")
        asked = await amh.store.fetchall(
            "SELECT message_id FROM outbox WHERE kind = ?", (envelope_pb2.MESSAGE_KIND_REDELIVERY_REQUEST,)
        )
    assert not found and not asked  # not taken for a store put back, and nobody asked for anything
    refused = [e["problem"] for e in captured_logs.records("checkpoint.witness_answer_refused")]
    assert set(refused) == {"a longer log than this one, unknown_key", "not a checkpoint"}, refused
    assert not captured_logs.records("checkpoint.behind_witness", "restore.ask_failed")


PAGE = [i.to_bytes(2, "big") + bytes(30) for i in range(1_000)]


@pytest.mark.parametrize(
    ("listed", "ended", "calls", "left_out"),
    [
        ([*PAGE, b"no token"], PAGE, 3, 1_002),  # the total, a page, and the same page again
        ([b"no token"] * 1_000, [], 2, 1_000),  # the total, and a page of nothing that could be a token
        ([PAGE[0]] * 1_000, [], 2, 1_000),  # the total, and a page of one token over and over
    ],
)
async def test_a_gateway_that_lists_the_same_page_for_ever_does_not_keep_a_node_listing(
    federation: LocalFederation,
    captured_logs: CapturedLogs,
    listed: list[bytes],
    ended: list[bytes],
    calls: int,
    left_out: int,
) -> None:
    """A node told that the gateway holds more of its subscriptions than it knows of lists
    them, a page at a time, to end those it does not know (a store put back). A gateway that
    is not what it should be answers every page alike: with the same thousand tokens and one
    that is no token, with a thousand that are none, or with one token a thousand times. amh
    ends the listing where a page does not go on from the last, ends what it was shown, says
    how much it left out (the page it would not take, and what was no token), and connects."""
    told: dict[str, Message] = {
        "ListSubscriptions": gateway_pb2.ListSubscriptionsResponse(link_tokens=listed, total=10**6),
    }
    stand_in = HostileGateway(Garbler(random.Random(SEED)), federation.gateway_config.tls, told)
    async with running(federation, nodes=()) as cluster, stand_in as hostile:
        async with asyncio.timeout(60):  # listing for ever, it would never connect
            amh = await cluster.start_node("amh", gateway_port=hostile.port)
        removed = await audit_events(amh, "subscription.removed")
    assert sorted(t for entry in removed for t in entry["tokens"]) == [t.hex() for t in ended]
    assert hostile.calls["ListSubscriptions"] == calls
    said = [(e["problem"], e["left_out"]) for e in captured_logs.records("gateway.answer_malformed")]
    assert said == [("pages out of order", left_out)], said


async def test_an_answer_about_no_message_of_this_node_s_is_not_written_into_its_log(
    federation: LocalFederation,
) -> None:
    """The node logged each acknowledgement's message id (at debug) before looking it up, so
    a gateway that is not what it should be could write what it liked into the node's log.
    Now only an answer about a message this node has in flight is logged."""
    captured = io.StringIO()
    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.nodes["amh"]
        logs.configure("debug", stream=captured)
        try:
            told = "Ms Example, of 1 Any Street " * 100
            forwarded = gateway_pb2.SEND_STATUS_FORWARDED
            await amh.outbox.on_answers([gateway_pb2.SendAck(message_id=told, recipient_node="csc", status=forwarded)])
        finally:
            logs.configure("info")
    assert "Ms Example" not in captured.getvalue()


class EndsWhenAsked(HostileGateway):
    """Ends the stream, unanswered, whenever the node asks on it who is linked to a family."""

    async def _connect(
        self, frames: AsyncIterator[gateway_pb2.NodeFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async for frame in frames:
            if any(one.HasField("resolve") for one in unbatch(frame)):
                self.streams += 1
                self.streams_done.set()
                return


async def test_a_gateway_that_ends_the_stream_when_asked_who_is_linked_leaves_nothing_shared(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look-up waits on the stream for its answer; the stream ending takes the answer
    with it. The share is refused then, not when a timer runs out, as one to try again, and
    nothing of it is kept."""
    monkeypatch.setattr(link, "UNARY_TIMEOUT_S", 3600.0)
    family = stories.think_family_people()
    async with running(federation, nodes=("amh",)) as cluster:
        tokens = await open_case(cluster, "amh", family)
        await cluster.stop_node("amh")
        async with EndsWhenAsked(Garbler(random.Random(SEED)), federation.gateway_config.tls, {}) as hostile:
            amh = await cluster.start_node("amh", gateway_port=hostile.port)
            api = cluster.api("amh")
            recorded = await api.RecordAssessment(
                node_api_pb2.RecordAssessmentRequest(
                    actor=PRACTITIONER,
                    case_id=await _case_id(cluster, "amh"),
                    assessment=stories.parent_risk_change(tokens[0], tokens[-1]),
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async with asyncio.timeout(30):  # the answer waited on for ever: failed, not hung
                    await share(cluster, recorded.assessment_id)
            assert hostile.streams == 1
            assert amh.store is not None
            kept = [await amh.store.fetchone(f"SELECT count(*) FROM {table}") for table in ("shares", "outbox")]
            decided = await audit_events(amh, "share.decision")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == (
        "cannot reach the gateway to find the agencies linked to this family (UNAVAILABLE); nothing was shared, "
        "try again"
    )
    assert kept == [(0,), (0,)] and decided == []


class SendsABatch(HostileGateway):
    """On each stream, sends one frame (a batch Linkage never sends), then reads until the
    node ends the stream; done after `streams` of them."""

    def __init__(self, frame: gateway_pb2.GatewayFrame, tls: TlsFiles, streams: int = 2) -> None:
        super().__init__(Garbler(random.Random(SEED)), tls, {})
        self.frame, self.enough = frame, streams

    async def _connect(
        self, frames: AsyncIterator[gateway_pb2.NodeFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.write(self.frame)
        with contextlib.suppress(Exception):  # the node ended it (gRPC says so in a private type)
            async for _ in frames:
                pass
        self.streams += 1
        if self.streams >= self.enough:
            self.streams_done.set()


ACK = gateway_pb2.GatewayFrame(send_ack=gateway_pb2.SendAck(message_id="m", status=gateway_pb2.SEND_STATUS_FORWARDED))
ACKS = gateway_pb2.GatewayFrame(batch=gateway_pb2.GatewayFrames(frames=[ACK]))  # a batch, to put in another


@pytest.mark.parametrize(
    ("members", "said"),
    [
        # More answers than the node handles at once: taken whole, they would wait for ever for room.
        ([ACK] * (link.FRAME_WINDOW + 1), f"a batch may hold at most {MAX_BATCH_FRAMES} frames; this one held 257"),
        ([ACK] * (MAX_BATCH_FRAMES + 1), f"a batch may hold at most {MAX_BATCH_FRAMES} frames; this one held 65"),
        (
            [ACKS],
            "a batch of frames may not contain another batch",
        ),
    ],
    ids=["past_the_window", "too_many", "nested"],
)
async def test_a_batch_no_gateway_should_send_ends_the_stream_from_the_node_which_connects_again(
    federation: LocalFederation, captured_logs: CapturedLogs, members: list[gateway_pb2.GatewayFrame], said: str
) -> None:
    """A batch holds no batch and at most MAX_BATCH_FRAMES frames, fewer than a node handles at
    once (FRAME_WINDOW): a node takes a run of frames whole. One larger than the window once
    left the node waiting for room that never came, connected and reading nothing, and saying
    nothing. Now either breach is said, and the node ends the stream and opens another."""
    assert link.FRAME_WINDOW >= MAX_BATCH_FRAMES
    batch = gateway_pb2.GatewayFrame(batch=gateway_pb2.GatewayFrames(frames=members))
    async with running(federation, nodes=()) as cluster, SendsABatch(batch, federation.gateway_config.tls) as hostile:
        await cluster.start_node("amh", gateway_port=hostile.port)
        async with asyncio.timeout(30):  # wedged, the node would never end a stream
            await hostile.streams_done.wait()
    problems = [e["problem"] for e in captured_logs.records("gateway.protocol_error")]
    assert len(problems) >= 2 and set(problems) == {said}, problems


@pytest.mark.parametrize(
    ("proven_s", "attempts"), [(link.STREAM_PROVEN_S, [0, 1, 2]), (0.0, [0, 1, 1])], ids=["ended_at_once", "stood"]
)
async def test_a_stream_ended_as_soon_as_it_opened_counts_as_a_failed_dial(
    federation: LocalFederation,
    captured_logs: CapturedLogs,
    monkeypatch: pytest.MonkeyPatch,
    proven_s: float,
    attempts: list[int],
) -> None:
    """A gateway that ends every stream at once is dialled ever more slowly, as one that
    refuses the dial is: the count of failures goes on past a stream that did not stand. Once
    a stream has stood (here, for no time at all), its end is the first failure again.
    (`attempt` is the failures before each connection.)"""
    monkeypatch.setattr(link, "STREAM_PROVEN_S", proven_s)
    nested = gateway_pb2.GatewayFrame(batch=gateway_pb2.GatewayFrames(frames=[ACKS]))
    stand_in = SendsABatch(nested, federation.gateway_config.tls, streams=3)
    async with running(federation, nodes=()) as cluster, stand_in as hostile:
        await cluster.start_node("amh", gateway_port=hostile.port)
        async with asyncio.timeout(30):
            await hostile.streams_done.wait()
    assert [e["attempt"] for e in captured_logs.records("gateway.connected")][:3] == attempts
