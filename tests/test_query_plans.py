"""What a node's store is asked while it works reads by index, not by scanning a table
that grows with every message: a full scan costs nothing in a test and tenths of a
second in the store of a busy node, on every call that makes it."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, workflow_pb2
from node import retention
from tests.harness import PRACTITIONER, LocalFederation, next_item, running
from tests.test_challenges import challenge
from tests.test_workflows import CSC_WORKER, decline, s47_request, share

# Tables with a row (or several) per message, case or assessment.
GROWING = (
    *("inbox", "inbox_tokens", "outbox", "assessments", "shares", "closures", "chronology", "case_people", "cases"),
    *("info_requests", "info_requests_asked", "challenges"),
)
SCAN = re.compile(rf"^SCAN ({'|'.join(GROWING)})\b")
# A search bounded on one side only (`sender = ? AND message_id < ?`) reads every row
# past its bound: fine under a LIMIT, a scan in all but name without one.
OPEN_RANGE = re.compile(rf"^SEARCH ({'|'.join(GROWING)}) USING [\w ]+ \((\w+=\? AND )*\w+[<>]\?\)$")
# ...unless the equalities before it pick out one parent's few rows: a message's chronology
# items, a summary's withdrawals (inbox_withdrawals holds withdrawals only).
BOUNDED = ("(inbox_seq=? AND item>?)", "(sender=? AND summary_id=? AND message_id>?)")
NOT_QUERIES = re.compile(r"^\s*(PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|CREATE|DROP|ALTER)\b", re.IGNORECASE)
CONNECT: Callable[..., sqlite3.Connection] = sqlite3.connect  # untraced, for the plans themselves


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(database file, SQL) of every statement run from here on, values bound in."""
    seen: list[tuple[str, str]] = []

    def tracing(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = CONNECT(database, *args, **kwargs)
        path = str(database).removeprefix("file:").split("?")[0]
        db.set_trace_callback(lambda sql: seen.append((path, sql)))
        return db

    monkeypatch.setattr(sqlite3, "connect", tracing)
    return seen


# A growing table named under another name (`inbox i`): plans name it by that.
ALIAS = re.compile(rf"\b(?:{'|'.join(GROWING)})\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
NOT_ALIASES = {"WHERE", "JOIN", "ON", "SET", "ORDER", "GROUP", "LIMIT", "INDEXED", "LEFT", "INNER", "USING", "VALUES"}


def _unaliased(sql: str, detail: str) -> str:
    """A plan's line with the table's alias in the SQL put back as the table's name."""
    for match in ALIAS.finditer(sql):
        alias = match.group(1)
        if alias.upper() not in NOT_ALIASES:
            table = match.group(0).split()[0]
            detail = re.sub(rf"^(SCAN|SEARCH) {alias}\b", rf"\1 {table}", detail)
    return detail


def scans(statements: list[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path, sql in statements:
        if NOT_QUERIES.match(sql) or not Path(path).exists():
            continue
        with closing(connect_ro(path)) as db:
            plan = [_unaliased(sql, detail) for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        limited = re.search(r"\bLIMIT\b", sql, re.IGNORECASE) is not None
        unbounded = [d for d in plan if OPEN_RANGE.match(d) and not limited and not d.endswith(BOUNDED)]
        if bad := [d for d in plan if SCAN.match(d)] + unbounded:
            found[re.sub(r"\s+", " ", sql)[:300]] = bad
    return found


def connect_ro(path: str) -> sqlite3.Connection:
    return CONNECT(f"file:{path}?mode=ro", uri=True)


async def test_casework_reads_by_index(federation: LocalFederation, statements: list[tuple[str, str]]) -> None:
    async with running(federation) as cluster:
        statements.clear()  # start-up's migrations and whole-store reads happen once per start
        family = stories.think_family_people()
        amh = await cluster.api("amh").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="a-1", people=family)
        )
        csc = await cluster.api("csc").OpenCase(
            node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref="c-1", people=family)
        )
        parent, child = (p.link_token for p in amh.people)
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=amh.case_id, assessment=stories.parent_risk_change(parent, child)
            )
        )
        shared = await share(cluster, recorded.assessment_id)
        item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        csc_api = cluster.api("csc")
        await csc_api.OpenReceived(node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=item.message_id))
        await csc_api.ListReceived(node_api_pb2.ListReceivedRequest(actor=CSC_WORKER, link_token=parent))
        await csc_api.Chronology(node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=csc.case_id))
        page = node_api_pb2.ChronologyRequest(actor=CSC_WORKER, case_id=csc.case_id, page_size=1)
        page.page_token = (await csc_api.Chronology(page)).next_page_token
        assert page.page_token  # so that the next page's search is planned too
        await csc_api.Chronology(page)
        # amh's has its own assessment among what it received
        own = node_api_pb2.ChronologyRequest(actor=PRACTITIONER, case_id=amh.case_id)
        await cluster.api("amh").Chronology(own)
        await cluster.api("amh").ListAssessments(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=amh.case_id))
        own.page_size = 1
        await cluster.api("amh").Chronology(own)
        await csc_api.AskClarification(
            node_api_pb2.AskClarificationRequest(actor=CSC_WORKER, about_message_id=item.message_id, question="When?")
        )
        await csc_api.GetClosure(node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=csc.case_id))
        await cluster.api("amh").GetShareStatus(
            node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id)
        )
        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        await cluster.api("amh").AnswerClarification(
            node_api_pb2.AnswerClarificationRequest(
                actor=PRACTITIONER, request_message_id=question.message_id, answer="Since March."
            )
        )
        await next_item(cluster, "csc", env.MESSAGE_KIND_CLARIFICATION_RESPONSE)
        await csc_api.RequestInformation(s47_request(csc.case_id))
        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await decline(cluster, request.message_id, "Nothing more is held.")
        await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        await csc_api.ListInformationRequests(node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=csc.case_id))
        await cluster.api("amh").ListInformationRequests(
            node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id=amh.case_id)
        )
        raised = await challenge(cluster, case_id=csc.case_id, about_message_id=item.message_id)
        escalates = raised.recipients[0].message_id
        await challenge(cluster, case_id=csc.case_id, stage="LINE_MANAGER", escalates_message_id=escalates)
        challenged = await next_item(cluster, "amh", env.MESSAGE_KIND_CHALLENGE)
        await cluster.api("amh").RespondToChallenge(
            node_api_pb2.ChallengeReplyRequest(
                actor=PRACTITIONER,
                challenge_message_id=challenged.message_id,
                answer=workflow_pb2.CHALLENGE_ANSWER_MAINTAINED,
                response="It holds.",
            )
        )
        await next_item(cluster, "csc", env.MESSAGE_KIND_CHALLENGE_RESPONSE)
        for api, case_id in ((csc_api, csc.case_id), (cluster.api("amh"), amh.case_id)):
            await api.ListChallenges(node_api_pb2.CaseRequest(actor=CSC_WORKER, case_id=case_id))
            await api.ListDue(node_api_pb2.DueRequest(actor=CSC_WORKER))
        for by in ({}, {"case_ref": "c-1"}, {"case_id": csc.case_id}, {"person": family[0]}):
            await csc_api.FindCases(node_api_pb2.FindCasesRequest(actor=CSC_WORKER, include_closed=True, **by))
        await share(cluster, recorded.assessment_id, env.MESSAGE_KIND_CORRECTION)
        await cluster.api("amh").WithdrawSummary(
            node_api_pb2.WithdrawSummaryRequest(
                actor=PRACTITIONER, summary_id=item.summary.summary_id, reason="Error.", ground="WRONG_PERSON"
            )
        )
        await next_item(cluster, "csc", env.MESSAGE_KIND_WITHDRAWAL)
        await cluster.api("amh").ListDeliveryQueues(node_api_pb2.DeliveryQueuesRequest(actor=PRACTITIONER))
        with pytest.raises(grpc.aio.AioRpcError):  # erased: why it cannot be opened is looked up
            await csc_api.OpenReceived(node_api_pb2.OpenReceivedRequest(actor=CSC_WORKER, message_id=item.message_id))
        for node in cluster.nodes.values():  # the daily purge, with nothing yet old enough
            assert node.store is not None
            await retention.purge(node.store, node.clock, keep_days=retention.MIN_KEEP_DAYS)
        found = scans(statements)
    assert not found, found
