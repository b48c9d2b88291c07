"""Closing a case only after alerting the others ("always alert other professionals ...
when planning or proposing to close the case", seed 000): a proposal to every agency
linked to the family, with a day to answer by; their answers; newcomers alerted; and the
close itself, refused while answers are due or an objection stands unless the closer
records why. Closing unsubscribes the case's people at the gateway."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from linkage.calendar import on_calendar
from linkage.content import CLOSURE_ANSWERS
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node import answers, dates, repeats
from node.cases import Cases, failed, public_tokens
from node.context import NodeContext
from node.errors import ApiError, check_notes, invalid, not_found
from node.involvement import by_agency
from node.messaging import Sealed, Unreachable, tokens_sent
from node.store import FetchAll, FetchOne, Tx


class Closures:
    def __init__(self, ctx: NodeContext, cases: Cases) -> None:
        self.ctx = ctx
        self.cases = cases

    @repeats.answering(node_api_pb2.ClosureStatus)
    async def propose_closure(self, request: node_api_pb2.ProposeClosureRequest) -> node_api_pb2.ClosureStatus:
        await self.cases.open_case_row(request.case_id)
        check_notes(note=request.note)
        intent = request.intent
        if not self.ctx.policy.codes.has("closure_intent", intent.intent):
            raise invalid(f"intent.intent must be one of {self.ctx.policy.codes.codes('closure_intent')}")
        if not on_calendar(request.respond_by):
            raise invalid("respond_by must be a date (year, month, day) by which the others should answer")
        today = dates.iso(dates.today(self.ctx.clock.now_ms()))
        if dates.iso(request.respond_by) < today:
            raise invalid(
                f"respond_by {dates.iso(request.respond_by)} has passed: "
                "the others need time to answer (today at the earliest)"
            )
        await self._refuse_a_second_proposal(self.ctx.store.fetchone, request.case_id)
        tokens = public_tokens(await self.cases.people(request.case_id))
        invitees = await self._involved(tokens, "nothing was proposed")
        closure_id = self.ctx.new_id()
        notice = workflow_pb2.ClosureIntentNotice(
            closure_id=closure_id,
            intent=intent,
            respond_by=request.respond_by,
            note=request.note,
            link_tokens=tokens,
        )
        sealed = await self._seal_intents(invitees, notice, request.actor)
        async with self.ctx.store.tx() as tx:
            # Again where writes are serial: a call racing this one may have proposed one meanwhile.
            await self._refuse_a_second_proposal(tx.fetchone, request.case_id)
            await answers.closure_proposed(
                tx, closure_id, request.case_id, dates.iso(request.respond_by), intent, request.note, invitees
            )
            await tx.audit(
                "closure.proposed",
                request.actor,
                tokens=tokens,
                rationale=request.note,
                detail={
                    "case_id": request.case_id,
                    "closure_id": closure_id,
                    "invited": invitees,
                    "respond_by": dates.iso(request.respond_by),
                    "intent": intent.intent,
                },
            )
            await self.ctx.messenger.queue(tx, sealed, closure_id, request.actor)
            proposed = await self._kept_status(tx, request)
        await self.ctx.changed()
        return proposed

    async def _involved(self, tokens: list[bytes], nothing: str) -> list[str]:
        """The other agencies linked to these people now, as the gateway knows them."""
        return sorted(by_agency(await self.ctx.discover(tokens, nothing)))

    async def _proposal_named(self, closure_id: str, people: Iterable[node_api_pb2.CasePerson]) -> list[bytes]:
        """Those the closure proposal named, as its first alert went, but for anyone the case
        now protects: for the notice that the case closed, when the case names no one any more
        (each taken out of it since). Empty if no alert went, or nothing of it is left."""
        alerts = "o.share_id = ? AND o.kind = ?", (closure_id, envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT)
        named = await tokens_sent(self.ctx.store.fetchone, *alerts)
        protected = {p.link_token for p in people if p.protect_identity}
        return [t for t in named or () if t not in protected]

    async def _seal_intents(
        self, invitees: list[str], notice: workflow_pb2.ClosureIntentNotice, actor: summary_pb2.Practitioner
    ) -> list[Sealed | Unreachable]:
        return await self.ctx.messenger.seal_each(
            invitees,
            envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT,
            list(notice.link_tokens),
            notice.closure_id,
            lambda _: lambda body: body.closure_intent.CopyFrom(notice),
            actor,
        )

    async def _alert_newcomers(
        self, request: node_api_pb2.CloseCaseRequest, status: node_api_pb2.ClosureStatus, tokens: list[bytes]
    ) -> None:
        """Agencies linked to the family since the closure was proposed were never alerted:
        alert them now, with as long to answer as the others had, and do not close yet."""
        invited = {*status.awaiting, *(r.node_id for r in status.replies)}
        newcomers = [n for n in await self._involved(tokens, "the case was not closed") if n not in invited]
        if not newcomers:
            return
        proposed_at_ms, intent, note = await self.ctx.store.fetchone(
            "SELECT proposed_at_ms, intent, note FROM closures WHERE closure_id = ?", (status.closure_id,)
        )
        allowed = dates.days_between(dates.iso(dates.today(proposed_at_ms)), dates.iso(status.respond_by))
        respond_by = dates.add_days(dates.today(self.ctx.clock.now_ms()), max(allowed, 1))
        notice = workflow_pb2.ClosureIntentNotice(
            closure_id=status.closure_id,
            intent=summary_pb2.ClosureIntent.FromString(intent),
            respond_by=respond_by,
            note=note,
            link_tokens=tokens,
        )
        sealed = await self._seal_intents(newcomers, notice, request.actor)
        async with self.ctx.store.tx() as tx:
            if not await tx.fetchone(
                "SELECT 1 FROM closures WHERE closure_id = ? AND state = 'proposed'", (status.closure_id,)
            ):
                raise failed(f"case {request.case_id!r} is closed")  # by a call racing this one
            await answers.closure_proposed(
                tx, status.closure_id, request.case_id, dates.iso(respond_by), notice.intent, note, newcomers
            )
            await tx.audit(
                "closure.alerted_late",
                request.actor,
                tokens=tokens,
                detail={
                    "case_id": request.case_id,
                    "closure_id": status.closure_id,
                    "invited": newcomers,
                    "respond_by": dates.iso(respond_by),
                },
            )
            await self.ctx.messenger.queue(tx, sealed, status.closure_id, request.actor)
        await self.ctx.changed()
        names = ", ".join(self.ctx.agency(n).agency_name for n in newcomers)
        raise failed(
            f"not closed: {names} became involved after the closure was proposed. They have been alerted now "
            f"and asked to answer by {dates.iso(respond_by)}; close once they answer or that date passes"
        )

    @staticmethod
    async def _refuse_a_second_proposal(fetchone: FetchOne, case_id: str) -> None:
        if await fetchone("SELECT 1 FROM closures WHERE case_id = ? AND state = 'proposed'", (case_id,)):
            raise failed("a closure is already proposed for this case; see GetClosure")

    async def _closure(self, case_id: str, fetchone: FetchOne) -> tuple[str, str, str] | None:
        row = await fetchone(
            "SELECT closure_id, respond_by, state FROM closures WHERE case_id = ? ORDER BY closure_id DESC LIMIT 1",
            (case_id,),
        )
        return (row[0], row[1], row[2]) if row else None

    @staticmethod
    async def _invitees(fetchall: FetchAll, closure_id: str) -> list[Any]:
        """(node, answer, reason, at) of each agency alerted to the closure."""
        return await fetchall(
            "SELECT node_id, answer, reason, at_ms FROM closure_invitees WHERE closure_id = ? ORDER BY node_id",
            (closure_id,),
        )

    def _answered(self, rows: list[Any]) -> list[node_api_pb2.ClosureReply]:
        """The answers among `_invitees`' rows, as the case system reads them."""
        return [
            node_api_pb2.ClosureReply(
                node_id=n, agency_name=self.ctx.agency(n).agency_name, answer=a, reason=r, at_ms=at or 0
            )
            for n, a, r, at in rows
            if a
        ]

    async def closure_status(self, case_id: str, tx: Tx | None = None) -> node_api_pb2.ClosureStatus:
        """The case's closure as committed, or, in `tx`, as that transaction leaves it."""
        fetchone, fetchall = (tx.fetchone, tx.fetchall) if tx else (self.ctx.store.fetchone, self.ctx.store.fetchall)
        closure = await self._closure(case_id, fetchone)
        if closure is None:
            if await fetchone("SELECT 1 FROM cases WHERE case_id = ?", (case_id,)) is None:
                raise not_found(f"no case {case_id!r} at this node")
            return node_api_pb2.ClosureStatus(case_id=case_id, state="none")
        closure_id, respond_by, state = closure
        rows = await self._invitees(fetchall, closure_id)
        replies = self._answered(rows)
        return node_api_pb2.ClosureStatus(
            case_id=case_id,
            closure_id=closure_id,
            state=state,
            respond_by=dates.parse(respond_by),
            awaiting=[n for n, a, _, _ in rows if not a],
            replies=replies,
            objection_outstanding=any(r.answer == workflow_pb2.CLOSURE_ANSWER_OBJECT for r in replies),
        )

    async def _kept_status(
        self, tx: Tx, request: node_api_pb2.ProposeClosureRequest | node_api_pb2.CloseCaseRequest
    ) -> node_api_pb2.ClosureStatus:
        """The closure as this call leaves it, kept to answer a repeat of the call."""
        status = await self.closure_status(request.case_id, tx)
        await repeats.keep(tx, request, status)
        return status

    @repeats.answering(node_api_pb2.RespondToClosureResponse)
    async def respond_to_closure(
        self, request: node_api_pb2.RespondToClosureRequest
    ) -> node_api_pb2.RespondToClosureResponse:
        check_notes(reason=request.reason)
        row = await self.ctx.store.fetchone(
            "SELECT i.sender, b.signed FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            "WHERE i.message_id = ? AND i.kind = ?",
            (request.intent_message_id, envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT),
        )
        if row is None:
            raise not_found(f"no closure intent {request.intent_message_id!r} was received by this node")
        if request.answer not in CLOSURE_ANSWERS:
            raise invalid("answer must be AGREE or OBJECT")
        if request.answer == workflow_pb2.CLOSURE_ANSWER_OBJECT and not request.reason.strip():
            raise invalid("an objection needs its reason, so the closing agency can act on it")
        sender = row[0]
        intent = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(row[1]).body)
        closure_id = intent.closure_intent.closure_id
        reply = workflow_pb2.ClosureResponse(closure_id=closure_id, answer=request.answer, reason=request.reason)
        tokens = list(intent.closure_intent.link_tokens)
        sealed = await self.ctx.messenger.seal_each(
            [sender],
            envelope_pb2.MESSAGE_KIND_CLOSURE_RESPONSE,
            tokens,
            closure_id,
            lambda _: lambda body: body.closure_response.CopyFrom(reply),
            request.actor,
            in_reply_to=request.intent_message_id,
        )
        answer = workflow_pb2.ClosureAnswer.Name(request.answer).removeprefix("CLOSURE_ANSWER_")
        response = node_api_pb2.RespondToClosureResponse(message_id=sealed[0].message_id)
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                "closure.responded",
                request.actor,
                tokens=tokens,
                counterpart=sender,
                decision=answer,
                rationale=request.reason,
                detail={"closure_id": closure_id},
            )
            await self.ctx.messenger.queue(tx, sealed, closure_id, request.actor)
            await answers.answered(
                tx,
                request.intent_message_id,
                sender,
                request.answer,
                response.message_id,
                envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT,
            )
            await repeats.keep(tx, request, response)
        await self.ctx.changed()
        return response

    @repeats.answering(node_api_pb2.ClosureStatus)
    async def close_case(self, request: node_api_pb2.CloseCaseRequest) -> node_api_pb2.ClosureStatus:
        await self.cases.open_case_row(request.case_id)
        check_notes(note=request.note, override_objections_reason=request.override_objections_reason)
        status = await self.closure_status(request.case_id)
        if status.state != "proposed":
            raise failed(
                "propose the closure first (ProposeClosure): the other agencies involved must be alerted "
                "before a case is closed"
            )
        today = dates.iso(dates.today(self.ctx.clock.now_ms()))
        if status.awaiting and today <= dates.iso(status.respond_by):
            raise failed(f"waiting for answers from {', '.join(status.awaiting)} until {dates.iso(status.respond_by)}")
        people = await self.cases.people(request.case_id)
        tokens = public_tokens(people)
        await self._alert_newcomers(request, status, tokens)
        objections = _objections(status.replies)
        _refuse_objections(objections, request)
        invitees = [r.node_id for r in status.replies] + list(status.awaiting)
        if not tokens:  # a message must name someone the agencies it alerted know of
            tokens = await self._proposal_named(status.closure_id, people)
        notice = workflow_pb2.ClosureNotice(
            closure_id=status.closure_id, closed_on=dates.today(self.ctx.clock.now_ms()), note=request.note
        )
        sealed = await self.ctx.messenger.seal_each(
            sorted(invitees),
            envelope_pb2.MESSAGE_KIND_CLOSURE_NOTICE,
            tokens,
            status.closure_id,
            lambda _: lambda body: body.closure_notice.CopyFrom(notice),
            request.actor,
        )
        async with self.ctx.store.tx() as tx:
            # Again where writes are serial: an objection may have come meanwhile, and the closer
            # has not read it (nor overridden it, whatever they wrote of the others).
            now = _objections(self._answered(await self._invitees(tx.fetchall, status.closure_id)))
            if came := [r for r in now if r not in objections]:
                _refuse_objections(now, request)
                raise ApiError(
                    grpc.StatusCode.ABORTED,
                    f"{_said(came)}: an objection came while this close was made; read it, then close again",
                )
            if await answers.closure_made(tx, status.closure_id) is None:  # a call racing this one closed it first
                raise failed(f"case {request.case_id!r} is closed")
            await tx.audit(
                "case.closed",
                request.actor,
                tokens=[p.link_token for p in people],
                rationale=request.note,
                detail={
                    "case_id": request.case_id,
                    "closure_id": status.closure_id,
                    "objections_overridden": request.override_objections_reason,
                    "unanswered": list(status.awaiting),
                },
            )
            await self.ctx.messenger.queue(tx, sealed, status.closure_id, request.actor)
            closed = await self._kept_status(tx, request)
        await self.ctx.changed()
        await self.cases.end_subscriptions(request.actor)
        return closed


def _objections(replies: Iterable[node_api_pb2.ClosureReply]) -> list[node_api_pb2.ClosureReply]:
    return [r for r in replies if r.answer == workflow_pb2.CLOSURE_ANSWER_OBJECT]


def _said(objections: list[node_api_pb2.ClosureReply]) -> str:
    return "; ".join(f"{r.agency_name} objects: {r.reason.rstrip('.')}" for r in objections)


def _refuse_objections(objections: list[node_api_pb2.ClosureReply], request: node_api_pb2.CloseCaseRequest) -> None:
    """An objection stands against a close unless the closer records why they close regardless."""
    if objections and not request.override_objections_reason.strip():
        raise failed(
            f"{_said(objections)}. Resolve it, or record why you close regardless (override_objections_reason)"
        )
