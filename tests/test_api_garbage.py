"""Every call of the node's API and the gateway's, given requests no case system or node
should send, answers with a status a person can act on (never UNKNOWN or INTERNAL, which
mean a defect, and always with a message), and leaves every store whole: SQLite's
integrity check passes, each audit chain verifies, and the federation still shares.

The requests are built from the contracts (tests/api_garbler.py): half filled at random,
half valid ones with a field or two made wrong, with real ids, tokens and codes mixed in so
that they get past the first look-up. Seeded: a failure names the request, and comes back
(LINKAGE_FUZZ_SEED tries other requests)."""

from __future__ import annotations

import asyncio
import functools
import os
import random
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from linkage import stories
from linkage.auditlog import verify_chain
from linkage.config import GatewayLimits
from linkage.readonly import connect_read_only
from linkage.refusals import MAX_BYTES
from linkage.transport import api_channel
from linkage.v1 import gateway_pb2, node_api_pb2, summary_pb2
from node.server import NodeServer
from tests.api_garbler import Garbler
from tests.harness import PRACTITIONER, Cluster, LocalFederation, running, wait_count, wait_delivered
from tests.test_federation import _case_id, open_case, share_think_family, summaries
from tests.test_workflows import planned_closure, s47_request

# The same requests each run; another seed tries others (no failure was found in 20 tried).
SEED = int(os.environ.get("LINKAGE_FUZZ_SEED", "43"))
CALLS = 30  # per method and node: half at random, half spoiled valid ones
# What a defect looks like from outside: an exception nobody mapped (UNKNOWN), a server
# that broke (INTERNAL, DATA_LOSS), or a method the contract names and the server lacks.
DEFECTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
# A watch that took its request waits for news: the deadline ends it, as a client would.
WATCH_DEADLINE_S = 1.0
NODE_API: ServiceDescriptor = node_api_pb2.DESCRIPTOR.services_by_name["NodeApi"]
GATEWAY: ServiceDescriptor = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
TEXT = "A synthetic note for the test."
# What the client says in place of a refusal whose message gRPC would not carry.
TOO_LONG = "metadata size exceeds"


async def test_every_call_refuses_garbage_with_a_status_a_person_can_act_on_and_loses_nothing(
    federation: LocalFederation,
) -> None:
    async with running(federation, limits=GatewayLimits(control_per_second=1e6, control_burst=10**6)) as cluster:
        await _every_workflow_under_way(cluster)
        garbler = Garbler(random.Random(SEED), *await _known(cluster))
        rng = random.Random(SEED + 1)
        answered: dict[str, set[str]] = {}
        for node_id in ("amh", "csc"):
            ids = await _ids_by_column(cluster.nodes[node_id])
            channel = cluster.closes(api_channel(cluster.nodes[node_id].config.api_socket))
            for method in NODE_API.methods:
                requests = _requests(garbler, rng, method, functools.partial(_valid, garbler=garbler, ids=ids))
                at_once = node_id == "csc"  # amh's in order; csc's together, racing each other
                answered.setdefault(method.name, set()).update(await _call_all(channel, method, requests, at_once))
        as_amh = functools.partial(_valid, garbler=garbler, ids={"node_id": ["amh"]})
        channel = cluster.gateway_channel("amh")
        for method in GATEWAY.methods:
            if method.client_streaming:
                continue  # Connect: its frames have tests of their own (test_hardening's S9)
            requests = _requests(garbler, rng, method, as_amh)
            answered.setdefault(f"Gateway.{method.name}", set()).update(await _call_all(channel, method, requests))

        # The spoiled requests got past validation to the work in most calls (26 to 30 of
        # the 39 in runs so far, as the ids drawn vary): the test reaches the work itself.
        worked = sorted(name for name, codes in answered.items() if "OK" in codes)
        assert len(worked) >= 20, answered
        for node in cluster.nodes.values():
            await _whole(node)
        with closing(connect_read_only(federation.gateway_config.store_path)) as gateway_store:
            assert gateway_store.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # And the federation still does its work.
        await _shares_and_delivers(cluster)


async def _every_workflow_under_way(cluster: Cluster) -> None:
    """A summary shared and delivered; then csc asks amh for clarification, asks for
    information under section 47, challenges its assessment and proposes closing: amh holds
    one of each to answer."""
    await share_think_family(cluster)
    await wait_delivered(cluster.nodes["amh"], 2)
    csc = cluster.api("csc")
    (received,) = await summaries(cluster, "csc")
    case_id = await _case_id(cluster, "csc")
    await csc.AskClarification(
        node_api_pb2.AskClarificationRequest(actor=PRACTITIONER, about_message_id=received.message_id, question=TEXT)
    )
    await csc.RequestInformation(s47_request(case_id, "amh"))
    await csc.RaiseChallenge(_challenge(case_id))
    await csc.ProposeClosure(planned_closure(PRACTITIONER, case_id))
    await wait_count(cluster.nodes["amh"], "SELECT COUNT(*) FROM inbox", (), 5)


def _challenge(case_id: str) -> node_api_pb2.RaiseChallengeRequest:
    return node_api_pb2.RaiseChallengeRequest(
        actor=PRACTITIONER,
        case_id=case_id,
        to_node="amh",
        stage="PRACTITIONER",
        subject="RISK_ASSESSMENT",
        concern=TEXT,
        outcome_sought=TEXT,
    )


def _requests(
    garbler: Garbler, rng: random.Random, method: MethodDescriptor, valid: Callable[[type[Message]], Message]
) -> list[Message]:
    cls = GetMessageClass(method.input_type)
    made = [garbler.message(cls) for _ in range(CALLS // 2)]
    return made + [garbler.spoil(valid(cls), rng.choice((1, 1, 2, 3))) for _ in range(CALLS - len(made))]


async def _call_all(
    channel: grpc.aio.Channel, method: MethodDescriptor, requests: list[Message], at_once: bool = False
) -> set[str]:
    """Each request's status, asserting none is a defect and each refusal says why. In order,
    each on the state the last left, unless `at_once` (a watch always: its deadlines overlap)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialise: Callable[[Any], bytes] = lambda m: m.SerializeToString()  # noqa: E731

    async def one(request: Message) -> grpc.StatusCode:
        try:
            if method.server_streaming:
                call: Any = channel.unary_stream(path, request_serializer=serialise)(request, timeout=WATCH_DEADLINE_S)
                async for _ in call:
                    pass
            else:
                await channel.unary_unary(path, request_serializer=serialise)(request)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return grpc.StatusCode.OK  # taken, and waiting for news
            details = exc.details() or ""
            assert code not in DEFECTS, f"{method.name} answered {code.name} ({details}) to {request}"
            assert details.strip(), f"{method.name} refused with {code.name} and no message"
            assert TOO_LONG not in details, f"{method.name}'s refusal was too long to carry, to {request}"
            return code
        return grpc.StatusCode.OK

    if at_once or method.server_streaming:
        codes = await asyncio.gather(*(one(r) for r in requests))
    else:
        codes = [await one(r) for r in requests]
    return {c.name for c in codes}


async def _known(cluster: Cluster) -> tuple[list[str], list[bytes]]:
    """Ids, tokens and codes the federation holds now: every id and token in the nodes'
    stores, with the node ids and a few codes of the code lists."""
    texts = {*cluster.nodes, "ENG", "CHILD_AT_RISK", "NHS_MENTAL_HEALTH", "SHARED_IN_ERROR", "AT_RISK", "nhs"}
    tokens: set[bytes] = set()
    for node in cluster.nodes.values():
        for values in (await _stored(node)).values():
            texts.update(v for v in values if isinstance(v, str))
            tokens.update(v for v in values if isinstance(v, bytes))
    return sorted(texts), sorted(tokens)


async def _ids_by_column(node: NodeServer) -> dict[str, list[str]]:
    """The ids in a node's store, by column name: a request's `case_id` is tried with the
    node's case ids, and any `*_message_id` with the messages it received."""
    ids = {column: [v for v in values if isinstance(v, str)] for column, values in (await _stored(node)).items()}
    assert node.store is not None
    ids["received_message_id"] = [v for (v,) in await node.store.fetchall("SELECT message_id FROM inbox")]
    return ids


async def _stored(node: NodeServer) -> dict[str, list[object]]:
    """Up to 20 values of each id and token column in a node's store, by column name."""
    assert node.store is not None
    found: dict[str, list[object]] = {}
    for (table,) in await node.store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for _, column, *_ in await node.store.fetchall(f"PRAGMA table_info({table})"):
            if column.endswith("_id") or "token" in column:
                rows = await node.store.fetchall(f"SELECT DISTINCT {column} FROM {table} LIMIT 20")
                found.setdefault(column, []).extend(v for (v,) in rows)
    return found


def _valid(cls: type[Message], garbler: Garbler, ids: dict[str, list[str]]) -> Message:
    """A request of `cls` as a caller would make one: the actor, ids of the right kind by
    field name, a real assessment and decision, people, codes, dates and words."""
    if cls is node_api_pb2.RaiseChallengeRequest:
        return _challenge(garbler.rng.choice(ids.get("case_id") or [""]))
    if cls is node_api_pb2.RequestInformationRequest:
        return s47_request(garbler.rng.choice(ids.get("case_id") or [""]), "amh")
    if cls is node_api_pb2.ProposeClosureRequest:
        return planned_closure(PRACTITIONER, garbler.rng.choice(ids.get("case_id") or [""]))
    request = cls()
    family = stories.think_family_people()
    tokens = garbler.known_bytes
    fd: Any  # upb's descriptor or the pure-Python one, which mypy tells apart
    for fd in cls.DESCRIPTOR.fields:
        name = fd.name
        value: Any
        if name == "actor":
            value = PRACTITIONER
        elif name.endswith("_id") and fd.type == fd.TYPE_STRING:
            kind = "received_message_id" if name.endswith("_message_id") else name
            value = garbler.rng.choice(ids.get(kind) or [""])
        elif name == "link_token" or name == "link_tokens":
            value = garbler.rng.choice(tokens) if name == "link_token" else tokens[:3]
        elif name == "assessment" and tokens:
            value = stories.parent_risk_change(garbler.rng.choice(tokens), garbler.rng.choice(tokens))
        elif name == "decision":
            value = stories.override_decision()
        elif name == "people":
            value = family
        elif name == "person":
            value = family[garbler.rng.randrange(len(family))]
        elif name in ("to_nodes", "recipients"):
            value = ["csc"]
        elif name == "ground":
            value = "NOT_TO_BE_RELIED_ON"
        elif fd.message_type is summary_pb2.Date.DESCRIPTOR:
            value = stories.days_from_today(14)
        elif fd.type == fd.TYPE_ENUM:
            value = garbler.rng.choice([v.number for v in fd.enum_type.values if v.number])
        elif name == "case_ref":
            value = f"case-{garbler.rng.randrange(100)}"
        elif fd.type == fd.TYPE_STRING and name != "page_token":
            value = TEXT
        else:
            continue
        _set(request, name, value)
    if cls is node_api_pb2.FindCasesRequest:  # one way to find a case at a time
        keep = garbler.rng.choice(("case_id", "case_ref", "person"))
        for other in {"case_id", "case_ref", "person"} - {keep}:
            request.ClearField(other)
    return request


def _set(request: Message, name: str, value: Any) -> None:
    field = getattr(request, name)
    if isinstance(value, Message):
        field.CopyFrom(value)
    elif isinstance(value, list):
        field.extend(value)
    else:
        setattr(request, name, value)


async def _shares_and_delivers(cluster: Cluster) -> None:
    """A fresh case at amh and csc, an assessment shared, and delivered to csc."""
    family = stories.think_family_people()
    amh = cluster.api("amh")
    opened = await amh.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="afterwards", people=family))
    await cluster.api("csc").OpenCase(
        node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="afterwards", people=family)
    )
    parent, child = (p.link_token for p in opened.people)
    recorded = await amh.RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER, case_id=opened.case_id, assessment=stories.parent_risk_change(parent, child)
        )
    )
    shared = await amh.ShareSummary(
        node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
        )
    )
    (to_csc,) = (r.message_id for r in shared.recipients if r.node_id == "csc")
    assert await cluster.nodes["amh"].outbox.settled(to_csc) == "delivered"


async def _whole(node: NodeServer) -> None:
    """Nothing half-written: SQLite finds its file sound, and the audit chain verifies."""
    assert node.store is not None
    (check,) = await node.store.fetchone("PRAGMA integrity_check")
    assert check == "ok", node.config.node_id
    rows: Iterable[Any] = await node.store.fetchall("SELECT seq, entry, hash FROM audit ORDER BY seq")
    assert verify_chain(rows).ok, node.config.node_id


async def test_a_refusal_that_quotes_hundreds_of_names_reaches_the_caller_cut_short(
    federation: LocalFederation,
) -> None:
    """An information request to 300 agencies not in the directory, named in Welsh: the
    refusal quotes them all, about 13 KB as gRPC carries it, which its client drops for a
    bare RESOURCE_EXHAUSTED. The caller gets the reason, and how much was left out."""
    async with running(federation, nodes=("csc",)) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        request = s47_request(await _case_id(cluster, "csc"), *(f"gwasanaeth-cymdeithasol-{n}-ŵŷ" for n in range(300)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("csc").RequestInformation(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("to_nodes names 'gwasanaeth-cymdeithasol-0-ŵŷ', ")
    assert details.endswith(" more characters left out)") and len(details.encode()) < MAX_BYTES + 50


@pytest.mark.parametrize("left_out", ["purpose", "what"])
async def test_an_information_request_without_its_purpose_or_what_it_asks_is_refused(
    federation: LocalFederation, left_out: str
) -> None:
    """An agency asked for information must be told both why and what: either alone is
    refused before anything is sent, and so is one given only in spaces."""
    async with running(federation, nodes=("csc",)) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        request = s47_request(await _case_id(cluster, "csc"))
        setattr(request, left_out, "  ")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("csc").RequestInformation(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "an information request needs its purpose and what is asked for, in plain words"


async def test_a_practitioner_s_text_with_a_control_character_is_refused_saying_where(
    federation: LocalFederation,
) -> None:
    """No case system should send an escape or a lone carriage return in a practitioner's
    words: the call is refused, naming the field, the character and where it is."""
    async with running(federation, nodes=("csc",)) as cluster:
        await open_case(cluster, "csc", stories.think_family_people())
        raised = _challenge(await _case_id(cluster, "csc"))
        raised.concern = "The risk is HIGH\rLOW"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.api("csc").RaiseChallenge(raised)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == ("concern holds a control character (U+000D) at character 17: send plain text")
