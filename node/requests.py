"""Asking and answering across agencies: clarification threaded to a received item,
and information requests that carry requester, purpose and lawful basis and end
in a recorded decision: provided, partly provided, or declined with reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc
from google.protobuf.message import Message

from linkage import jurisdictions
from linkage.calendar import given, on_calendar
from linkage.grounds import lawful_ground
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node import answers, dates, repeats
from node.audit_events import AuditEvent
from node.cases import Cases, public_tokens
from node.context import NodeContext
from node.erasure import erased_note
from node.errors import ApiError, check_notes, invalid, not_found
from node.messaging import CARRIES_SUMMARY, Fill
from node.policy.rules import basis_rules
from node.sharing import Sharing
from node.store import FetchAll, Tx
from node.withdrawals import standing

# What a caller of `_send` writes of what it sent, in the same transaction: (tx, thread, statuses).
Record = Callable[[Tx, str, list[node_api_pb2.DeliveryStatus]], Awaitable[object]]


async def _not_erased(fetchall: FetchAll, summary_id: str, asker: str) -> None:
    """Refuse an answer about a summary this node withdrew from the asker for erasure."""
    stands = (await standing(fetchall, summary_id)).get(asker) if summary_id else None
    if stands is not None and stands.state == "erased":
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the question is about summary {summary_id!r}, which this node withdrew from {asker} for erasure "
            f"(withdrawal {stands.withdrawal}): {asker} has erased it, and would erase an answer about it as it "
            "arrived",
        )


class Requests:
    def __init__(self, ctx: NodeContext, cases: Cases, sharing: Sharing) -> None:
        self.ctx = ctx
        self.cases = cases
        self.sharing = sharing

    async def received(
        self, message_id: str, kinds: tuple[int, ...]
    ) -> tuple[str, envelope_pb2.MessageBody, list[bytes]]:
        marks = ",".join("?" * len(kinds))
        row = await self.ctx.store.fetchone(
            f"SELECT i.seq, i.sender, b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            f"WHERE i.message_id = ? AND i.kind IN ({marks})",
            (message_id, *kinds),
        )
        if row is None:
            erased = await erased_note(self.ctx.store.fetchone, message_id)
            raise not_found(erased or f"no such item {message_id!r} was received by this node")
        body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(row[2]).body)
        tokens = [
            bytes(r[0])
            for r in await self.ctx.store.fetchall("SELECT token FROM inbox_tokens WHERE inbox_seq = ?", (row[0],))
        ]
        return row[1], body, tokens

    async def send(
        self,
        actor: summary_pb2.Practitioner,
        to: list[str],
        kind: envelope_pb2.MessageKind.ValueType,
        tokens: list[bytes],
        write: Fill,
        in_reply_to: str,
        event: AuditEvent,
        rationale: str = "",
        decision: str = "",
        record: Record | None = None,
        detail: dict[str, object] | None = None,
        summary_id: str = "",
        asked: Message | None = None,
    ) -> node_api_pb2.MessageSent:
        """Seal `write`'s content to each of `to`, queue it and audit `event`, in one transaction
        (with what `record` writes of it, and the answer to `asked`, the case system's call, if
        it named a request_id); `summary_id` names the summary it is about, if any."""
        thread = self.ctx.new_id()
        sealed = await self.ctx.messenger.seal_each(to, kind, tokens, thread, lambda _: write, actor, in_reply_to)
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                event,
                actor,
                tokens=tokens,
                rationale=rationale,
                message_id=in_reply_to,
                counterpart=",".join(to),
                decision=decision,
                summary_id=summary_id,
                detail={"thread": thread, **(detail or {})},
            )
            statuses = await self.ctx.messenger.queue(tx, sealed, thread, actor, summary_id)
            if record is not None:
                await record(tx, thread, statuses)
            sent = node_api_pb2.MessageSent(recipients=statuses)
            if asked is not None:
                await repeats.keep(tx, asked, sent)
        await self.ctx.changed()
        return sent

    async def nameable(self, case_id: str, what: str) -> list[bytes]:
        """The link tokens of an open case's people that a message to other agencies may name."""
        await self.cases.open_case_row(case_id)
        tokens = public_tokens(await self.cases.people(case_id))
        if not tokens:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"everyone in this case is identity-protected, so {what} could name nobody to the other agencies",
            )
        return tokens

    def named(self, nodes: Sequence[str]) -> list[str]:
        """The agencies a caller names, each once: all in the directory, none this node."""
        directory = self.ctx.directory()
        named = sorted(set(nodes))
        if unknown := [n for n in named if n not in directory.nodes]:
            raise invalid(f"to_nodes names {', '.join(map(repr, unknown))}: not in the federation's directory")
        if self.ctx.node_id in named:
            raise invalid("to_nodes names this node itself: a request goes to other agencies")
        return named

    @repeats.once
    async def ask_clarification(self, request: node_api_pb2.AskClarificationRequest) -> node_api_pb2.MessageSent:
        if not request.question.strip():
            raise invalid("question is empty: say what needs clarifying")
        check_notes(question=request.question)
        sender, _, tokens = await self.received(request.about_message_id, CARRIES_SUMMARY)
        ask = workflow_pb2.ClarificationRequest(about_message_id=request.about_message_id, question=request.question)

        async def record(tx: Tx, _: str, statuses: list[node_api_pb2.DeliveryStatus]) -> None:
            # What each question was about: its answer is erased with that item (node/erasure.py).
            await tx.executemany(
                "INSERT INTO clarifications_asked(message_id, about_message_id) VALUES (?, ?)",
                [(s.message_id, request.about_message_id) for s in statuses],
            )

        return await self.send(
            request.actor,
            [sender],
            envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,
            tokens,
            lambda body: body.clarification_request.CopyFrom(ask),
            request.about_message_id,
            "clarification.asked",
            record=record,
            asked=request,
        )

    @repeats.once
    async def answer_clarification(self, request: node_api_pb2.AnswerClarificationRequest) -> node_api_pb2.MessageSent:
        if not request.answer.strip():
            raise invalid("answer is empty")
        check_notes(answer=request.answer)
        sender, question, tokens = await self.received(
            request.request_message_id, (envelope_pb2.MESSAGE_KIND_CLARIFICATION_REQUEST,)
        )
        # The answer is about the summary the question was about: withdrawn for erasure, it goes
        # with it, even while the answer still waits to be sent (node/withdrawals.py).
        about = await self.ctx.store.fetchone(
            "SELECT summary_id FROM outbox WHERE message_id = ?", (question.clarification_request.about_message_id,)
        )
        summary_id = about[0] if about else ""
        await _not_erased(self.ctx.store.fetchall, summary_id, sender)
        reply = workflow_pb2.ClarificationResponse(request_message_id=request.request_message_id, answer=request.answer)
        return await self.send(
            request.actor,
            [sender],
            envelope_pb2.MESSAGE_KIND_CLARIFICATION_RESPONSE,
            tokens,
            lambda body: body.clarification_response.CopyFrom(reply),
            request.request_message_id,
            "clarification.answered",
            # Again where writes are serial: a withdrawal racing this answer may have committed meanwhile.
            record=lambda tx, _, __: _not_erased(tx.fetchall, summary_id, sender),
            summary_id=summary_id,
            asked=request,
        )

    @repeats.once
    async def request_information(self, request: node_api_pb2.RequestInformationRequest) -> node_api_pb2.MessageSent:
        if not request.purpose.strip() or not request.what.strip():
            raise invalid("an information request needs its purpose and what is asked for, in plain words")
        check_notes(purpose=request.purpose, what=request.what)
        jurisdiction = jurisdictions.of_node(self.ctx.me())  # the asking agency's law
        if problems := [f.message for f in basis_rules(request.lawful_basis, self.ctx.policy.codes, jurisdiction)]:
            raise invalid(f"an information request needs the lawful basis it relies on: {' '.join(problems)}")
        if given(request.needed_by):
            check_ahead("needed_by", request.needed_by, self.ctx.clock.now_ms())
        tokens = await self.nameable(request.case_id, "a request")
        to = self.named(request.to_nodes) or await self.ctx.resolve(tokens)
        if not to:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "no other agency is linked to this family yet")
        needed_by = request.needed_by if given(request.needed_by) else None
        ask = workflow_pb2.InformationRequest(
            purpose=request.purpose,
            lawful_basis=request.lawful_basis,
            what=request.what,
            needed_by=needed_by,  # left out when not given: an empty date would read as long past
            link_tokens=tokens,
        )

        async def record(tx: Tx, thread: str, statuses: list[node_api_pb2.DeliveryStatus]) -> None:
            await self.cases.open_case_row(request.case_id, tx.fetchone)  # again: it may have closed meanwhile
            await answers.asked(tx, thread, request.case_id, needed_by, request.purpose, statuses)

        return await self.send(
            request.actor,
            sorted(to),
            envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST,
            tokens,
            lambda body: body.information_request.CopyFrom(ask),
            "",
            "request.sent",
            request.purpose,
            record=record,
            asked=request,
        )

    @repeats.once
    async def respond_to_information_request(
        self, request: node_api_pb2.InformationReplyRequest
    ) -> node_api_pb2.MessageSent:
        if not request.decision.rationale.strip():
            raise invalid("record the reasons for the answer: a decision to provide or to decline needs them")
        check_notes(**{"decision.rationale": request.decision.rationale})
        sender, _, tokens = await self.received(
            request.request_message_id, (envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST,)
        )
        if request.answer == workflow_pb2.INFORMATION_ANSWER_DECLINED:
            decision = summary_pb2.ShareDecision()
            decision.CopyFrom(request.decision)
            decision.outcome = summary_pb2.DECISION_OUTCOME_NOT_SHARED
            decision.decided_by.CopyFrom(request.actor)
            decision.decided_at_ms = self.ctx.clock.now_ms()
            decline = workflow_pb2.InformationResponse(
                request_message_id=request.request_message_id, answer=request.answer, decision=decision
            )
            return await self.send(
                request.actor,
                [sender],
                envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE,
                tokens,
                lambda body: body.information_response.CopyFrom(decline),
                request.request_message_id,
                "share.decision",
                decision.rationale,
                "DECISION_OUTCOME_NOT_SHARED",
                record=lambda tx, _, statuses: answers.answered(
                    tx, request.request_message_id, sender, request.answer, statuses[0].message_id
                ),
                asked=request,
            )
        if request.answer not in (workflow_pb2.INFORMATION_ANSWER_PROVIDED, workflow_pb2.INFORMATION_ANSWER_PARTIAL):
            raise invalid("answer must be PROVIDED, PARTIAL or DECLINED")
        if not request.assessment_id:
            raise invalid("name the assessment to provide (assessment_id)")
        share = node_api_pb2.ShareSummaryRequest(  # a repeat is answered by the share's request_id
            actor=request.actor,
            assessment_id=request.assessment_id,
            decision=request.decision,
            request_id=request.request_id,
        )
        response = await self.sharing.share(share, only=[sender], in_reply_to=request.request_message_id, wrap=True)
        if not response.recipients:
            reasons = "; ".join(f.message for f in response.findings if f.severity == "error")
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the policy did not allow this answer ({reasons or lawful_ground(response.decision)}); "
                "the decision not to share was recorded",
            )
        return node_api_pb2.MessageSent(recipients=response.recipients)

    async def list_requests(self, request: node_api_pb2.CaseRequest) -> node_api_pb2.InformationRequests:
        """The requests about a case's family, each to its answer; the view is audited, as a
        chronology's is: it gathers what agencies asked about these people."""
        tokens, today = await self.case_view(request.case_id)
        listed = node_api_pb2.InformationRequests(
            sent=await self._sent_requests(request.case_id, today),
            received=await self._received_requests(tokens, today) if tokens else [],
        )
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                "requests.viewed",
                request.actor,
                tokens=tokens,
                detail={"case_id": request.case_id, "sent": len(listed.sent), "received": len(listed.received)},
            )
        return listed

    async def case_view(self, case_id: str) -> tuple[list[bytes], str]:
        """For a listing of what passed about a case's family: its people's tokens (protected
        or not, open or closed), and today's date to say what is overdue."""
        if await self.ctx.store.fetchone("SELECT 1 FROM cases WHERE case_id = ?", (case_id,)) is None:
            raise not_found(f"no case {case_id!r} at this node")
        tokens = [p.link_token for p in await self.cases.people(case_id)]
        return tokens, dates.iso(dates.today(self.ctx.clock.now_ms()))

    async def _sent_requests(self, case_id: str, today: str) -> list[node_api_pb2.SentInformationRequest]:
        requests = {
            request_id: node_api_pb2.SentInformationRequest(
                request_id=request_id,
                sent_at_ms=sent_at,
                purpose=purpose,
                needed_by=dates.parse(needed_by) if needed_by else None,
            )
            for request_id, sent_at, needed_by, purpose in await self.ctx.store.fetchall(
                "SELECT request_id, sent_at_ms, needed_by, purpose FROM info_requests WHERE case_id = ? "
                "ORDER BY sent_at_ms DESC",
                (case_id,),
            )
        }
        if not requests:
            return []
        rows = await self.ctx.store.fetchall(
            "SELECT a.request_id, a.message_id, a.node_id, a.answer, a.answered_at_ms, a.answer_message_id, o.state "
            "FROM info_requests_asked a LEFT JOIN outbox o ON o.message_id = a.message_id "
            f"WHERE a.request_id IN ({','.join('?' * len(requests))}) ORDER BY a.node_id",
            list(requests),
        )
        for request_id, message_id, node_id, answer, answered_at, answer_message_id, state in rows:
            sent = requests[request_id]
            sent.asked.append(
                node_api_pb2.AskedAgency(
                    node_id=node_id,
                    agency_name=self.ctx.agency(node_id).agency_name,
                    message_id=message_id,
                    delivery=state or "",
                    answer=answer,
                    answered_at_ms=answered_at or 0,
                    answer_message_id=answer_message_id,
                    overdue=not answer and _passed(sent, today),
                )
            )
        return list(requests.values())

    async def _received_requests(
        self, tokens: list[bytes], today: str
    ) -> list[node_api_pb2.ReceivedInformationRequest]:
        rows = await self.ctx.store.fetchall(
            "SELECT i.sender, i.message_id, i.received_at_ms, i.answer, i.answered_at_ms, b.signed "
            "FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            f"WHERE i.kind = ? AND i.seq IN (SELECT inbox_seq FROM inbox_tokens WHERE token IN "
            f"({','.join('?' * len(tokens))})) ORDER BY i.seq DESC",
            (envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST, *tokens),
        )
        received = []
        for sender, message_id, received_at, answer, answered_at, signed in rows:
            body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
            ask = body.information_request
            item = node_api_pb2.ReceivedInformationRequest(
                message_id=message_id,
                from_node=sender,
                from_agency=self.ctx.agency(sender).agency_name,
                received_at_ms=received_at,
                purpose=ask.purpose,
                what=ask.what,
                needed_by=ask.needed_by if given(ask.needed_by) else None,
                answer=answer,
                answered_at_ms=answered_at or 0,
            )
            item.overdue = not answer and _passed(item, today)
            received.append(item)
        return received


def check_ahead(field: str, date: summary_pb2.Date, now_ms: int) -> None:
    """A date a reply is wanted by: on the calendar, and not yet past."""
    if not on_calendar(date):
        raise invalid(f"{field} must be a date on the calendar (year, month, day), or left out")
    if dates.iso(date) < dates.iso(dates.today(now_ms)):
        raise invalid(f"{field} {dates.iso(date)} has passed: give a date from today on, or leave it out")


def _passed(request: node_api_pb2.SentInformationRequest | node_api_pb2.ReceivedInformationRequest, today: str) -> bool:
    """Whether the day a request was needed by has gone (one without a day is never late)."""
    return given(request.needed_by) and dates.iso(request.needed_by) < today
