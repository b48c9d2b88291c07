"""Professional challenge (domain.md §3.8 ESCALATION; seed 003: "understanding your local
resolution and escalation policy ... if agencies or professionals working together are
struggling to co-operate or are experiencing disagreements"). One agency challenges
another's decision or assessment about a family, at a stage of the local policy; the
challenged agency accepts it or maintains its decision with reasons; a challenge not
resolved is raised again at a later stage, naming the one before, so that the partnership
can see how each disagreement went."""

from __future__ import annotations

from typing import Any

import grpc

from linkage.calendar import given
from linkage.v1 import envelope_pb2, node_api_pb2, workflow_pb2
from node import answers, dates, repeats
from node.context import NodeContext
from node.errors import ApiError, check_notes, invalid, not_found
from node.requests import Requests, check_ahead
from node.store import Store, Tx

ANSWERS = (workflow_pb2.CHALLENGE_ANSWER_ACCEPTED, workflow_pb2.CHALLENGE_ANSWER_MAINTAINED)


class Challenges:
    def __init__(self, ctx: NodeContext, requests: Requests) -> None:
        self.ctx = ctx
        self.requests = requests

    @repeats.once
    async def raise_challenge(self, request: node_api_pb2.RaiseChallengeRequest) -> node_api_pb2.MessageSent:
        if not request.concern.strip() or not request.outcome_sought.strip():
            raise invalid("a challenge needs its concern and the outcome sought, in plain words")
        check_notes(concern=request.concern, outcome_sought=request.outcome_sought)
        rank = self._rank(request.stage)
        if not self.ctx.policy.codes.has("challenge_subject", request.subject):
            known = self._codes("challenge_subject")
            raise invalid(f"subject {request.subject!r} is not a challenge_subject code: {known}")
        if given(request.respond_by):
            check_ahead("respond_by", request.respond_by, self.ctx.clock.now_ms())
        if not request.to_node:
            raise invalid("to_node is empty: name the agency challenged")
        to = self.requests.named([request.to_node])[0]
        tokens = await self.requests.nameable(request.case_id, "a challenge")
        if request.about_message_id:
            await self._exchanged(request.about_message_id, to)
        if request.escalates_message_id:
            await self._escalates(request, to, rank)
        raised = workflow_pb2.Challenge(
            stage=request.stage,
            subject=request.subject,
            about_message_id=request.about_message_id,
            concern=request.concern,
            outcome_sought=request.outcome_sought,
            respond_by=request.respond_by if given(request.respond_by) else None,
            escalates_message_id=request.escalates_message_id,
            link_tokens=tokens,
        )

        async def record(tx: Tx, _: str, statuses: list[node_api_pb2.DeliveryStatus]) -> None:
            await self.requests.cases.open_case_row(request.case_id, tx.fetchone)  # it may have closed meanwhile
            if request.escalates_message_id:  # again where writes are serial: a call racing this one
                await _not_yet_escalated(tx, request.escalates_message_id)
            for status in statuses:
                await answers.challenged(tx, request.case_id, raised, status.message_id, status.node_id)

        return await self.requests.send(
            request.actor,
            [to],
            envelope_pb2.MESSAGE_KIND_CHALLENGE,
            tokens,
            lambda body: body.challenge.CopyFrom(raised),
            request.about_message_id,
            "challenge.raised",
            request.concern,
            record=record,
            detail={"stage": request.stage, "subject": request.subject, "escalates": request.escalates_message_id},
            asked=request,
        )

    def _codes(self, name: str) -> str:
        return ", ".join(self.ctx.policy.codes.codes(name))

    def _rank(self, stage: str) -> int:
        """A stage's place in the local policy's order (a federation's own stages need a rank)."""
        rank = self.ctx.policy.codes.entry("escalation_stage", stage).get("rank")
        if not isinstance(rank, int):
            known = self._codes("escalation_stage")
            raise invalid(f"stage {stage!r} is not an escalation_stage code with a rank: {known}")
        return rank

    async def _exchanged(self, message_id: str, node: str) -> None:
        """What a challenge is about is something the two agencies exchanged about a family."""
        row = await self.ctx.store.fetchone(
            "SELECT 1 FROM inbox WHERE sender = ? AND message_id = ? "
            "UNION ALL SELECT 1 FROM outbox WHERE recipient = ? AND message_id = ?",
            (node, message_id, node, message_id),
        )
        if row is None:
            raise not_found(f"no message {message_id!r} was received from or sent to {node!r} by this node")

    async def _escalates(self, request: node_api_pb2.RaiseChallengeRequest, to: str, rank: int) -> None:
        row = await self.ctx.store.fetchone(
            "SELECT case_id, node_id, stage FROM challenges WHERE message_id = ?", (request.escalates_message_id,)
        )
        if row is None:
            raise not_found(f"this node raised no challenge {request.escalates_message_id!r} to escalate")
        case_id, node_id, stage = row
        if (case_id, node_id) != (request.case_id, to):
            raise invalid(
                f"challenge {request.escalates_message_id!r} was raised with {node_id!r} in case {case_id!r}: "
                "escalate it with the same agency, in the same case"
            )
        if rank <= self._rank(stage):
            raise invalid(
                f"challenge {request.escalates_message_id!r} was raised at {stage}: escalating it takes a later "
                f"stage, not {request.stage}"
            )
        await _not_yet_escalated(self.ctx.store, request.escalates_message_id)

    @repeats.once
    async def respond(self, request: node_api_pb2.ChallengeReplyRequest) -> node_api_pb2.MessageSent:
        if request.answer not in ANSWERS:
            raise invalid("answer must be ACCEPTED or MAINTAINED")
        if not request.response.strip():
            raise invalid("response is empty: say what will change, or why the decision stands")
        check_notes(response=request.response)
        sender, _, tokens = await self.requests.received(
            request.challenge_message_id, (envelope_pb2.MESSAGE_KIND_CHALLENGE,)
        )
        reply = workflow_pb2.ChallengeResponse(
            challenge_message_id=request.challenge_message_id, answer=request.answer, response=request.response
        )
        answer = workflow_pb2.ChallengeAnswer.Name(request.answer).removeprefix("CHALLENGE_ANSWER_")

        async def record(tx: Tx, _: str, statuses: list[node_api_pb2.DeliveryStatus]) -> None:
            await answers.answered(
                tx,
                request.challenge_message_id,
                sender,
                request.answer,
                statuses[0].message_id,
                envelope_pb2.MESSAGE_KIND_CHALLENGE,
                request.response,
            )

        return await self.requests.send(
            request.actor,
            [sender],
            envelope_pb2.MESSAGE_KIND_CHALLENGE_RESPONSE,
            tokens,
            lambda body: body.challenge_response.CopyFrom(reply),
            request.challenge_message_id,
            "challenge.answered",
            request.response,
            answer,
            record=record,
            asked=request,
        )

    async def list_challenges(self, request: node_api_pb2.CaseRequest) -> node_api_pb2.Challenges:
        """The challenges about a case's family, raised and received; the view is audited."""
        tokens, today = await self.requests.case_view(request.case_id)
        listed = node_api_pb2.Challenges(
            raised=await self._raised(request.case_id, today),
            received=await self._received(tokens, today) if tokens else [],
        )
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                "challenges.viewed",
                request.actor,
                tokens=tokens,
                detail={"case_id": request.case_id, "raised": len(listed.raised), "received": len(listed.received)},
            )
        return listed

    async def _raised(self, case_id: str, today: str) -> list[node_api_pb2.ListedChallenge]:
        rows = await self.ctx.store.fetchall(
            "SELECT c.message_id, c.node_id, c.sent_at_ms, c.stage, c.subject, c.about_message_id, c.concern, "
            "c.outcome_sought, c.respond_by, c.escalates_message_id, o.state, c.answer, c.answered_at_ms, "
            "c.response, e.message_id FROM challenges c LEFT JOIN outbox o ON o.message_id = c.message_id "
            "LEFT JOIN challenges e ON e.escalates_message_id = c.message_id "
            "WHERE c.case_id = ? ORDER BY c.sent_at_ms DESC",
            (case_id,),
        )
        return [self._listed(today, *row) for row in rows]

    async def _received(self, tokens: list[bytes], today: str) -> list[node_api_pb2.ListedChallenge]:
        rows = await self.ctx.store.fetchall(
            "SELECT i.sender, i.message_id, i.received_at_ms, i.answer, i.answered_at_ms, i.answer_note, b.signed "
            "FROM inbox i JOIN inbox_bodies b ON b.seq = i.seq "
            "WHERE i.kind = ? AND i.seq IN (SELECT inbox_seq FROM inbox_tokens WHERE token IN "
            f"({','.join('?' * len(tokens))})) ORDER BY i.seq DESC",
            (envelope_pb2.MESSAGE_KIND_CHALLENGE, *tokens),
        )
        received = []
        for sender, message_id, received_at, answer, answered_at, note, signed in rows:
            body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
            c = body.challenge
            respond_by = dates.iso(c.respond_by) if given(c.respond_by) else ""
            received.append(
                self._listed(
                    today,
                    message_id,
                    sender,
                    received_at,
                    c.stage,
                    c.subject,
                    c.about_message_id,
                    c.concern,
                    c.outcome_sought,
                    respond_by,
                    c.escalates_message_id,
                    "",
                    answer,
                    answered_at,
                    note,
                    None,
                )
            )
        return received

    def _listed(
        self,
        today: str,
        message_id: str,
        node_id: str,
        at_ms: int,
        stage: str,
        subject: str,
        about: str,
        concern: str,
        outcome_sought: str,
        respond_by: str,
        escalates: str,
        delivery: Any,
        answer: int,
        answered_at_ms: Any,
        response: Any,
        escalated_by: Any,
    ) -> node_api_pb2.ListedChallenge:
        return node_api_pb2.ListedChallenge(
            message_id=message_id,
            node_id=node_id,
            agency_name=self.ctx.agency(node_id).agency_name,
            at_ms=at_ms,
            stage=stage,
            subject=subject,
            about_message_id=about,
            concern=concern,
            outcome_sought=outcome_sought,
            respond_by=dates.parse(respond_by) if respond_by else None,
            escalates_message_id=escalates,
            delivery=delivery or "",
            answer=answer,  # type: ignore[arg-type]
            answered_at_ms=answered_at_ms or 0,
            response=response or "",
            escalated_by=escalated_by or "",
            overdue=not answer and bool(respond_by) and respond_by < today,
        )


async def _not_yet_escalated(store: Store | Tx, message_id: str) -> None:
    row = await store.fetchone("SELECT message_id FROM challenges WHERE escalates_message_id = ?", (message_id,))
    if row is not None:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"challenge {message_id!r} was already escalated, by {row[0]!r}: escalate that one",
        )
