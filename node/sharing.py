"""Sharing summaries through the policy: a share, a risk change notice (increase,
decrease, resolution), a "now historical" update and a correction (withdrawals are in
withdrawals.py). All but a first share also go to every agency that holds an earlier
version of that summary (UK GDPR Art 19: recipients are told of rectification)."""

from __future__ import annotations

import json
import sqlite3

import grpc

from linkage import jurisdictions, logs
from linkage.codelists import CodeLists
from linkage.grounds import lawful_ground
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node import answers, dates, own_assessments, repeats
from node.context import NodeContext
from node.errors import ApiError, invalid, not_found, past_the_end
from node.event_numbers import EventNumbers
from node.messaging import SUMMARY_KINDS, Fill, kind_name
from node.outbox import LIVE
from node.policy import Finding, PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy.minimise import routing_tokens
from node.policy.rules import protected_role
from node.withdrawals import Withdrawals, standing

log = logs.get("node.sharing")

CHANGE_DIRECTIONS = {"NEW", "INCREASED", "DECREASED", "RESOLVED", "NOT_SUBSTANTIATED"}
EASED = frozenset({"DECREASED", "RESOLVED"})
RECOVERED = "given back by {} after this node's store was put back to an earlier copy"


def _case_closed() -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the case is closed, so this node is no longer linked to the family: a new summary goes from an "
        "open case; a correction, historical update or change notice still reaches every agency that had it",
    )


def finding(f: Finding) -> node_api_pb2.PolicyFinding:
    return node_api_pb2.PolicyFinding(code=f.code, message=f.message, severity=f.severity)


def decision_detail(share_id: str, result: PolicyResult, kind: int, jurisdiction: str) -> dict[str, object]:
    d = result.decision
    return {
        "share_id": share_id,
        "kind": kind_name(kind),
        "jurisdiction": jurisdiction,
        "consent_status": d.consent_status,
        "subject_informed": d.subject_informed,
        "approved_by": d.approved_by.id,
        "recipients": [
            {
                "node": r.node_id,
                "data_categories": list(r.data_categories),
                "fields": list(r.fields),
                "withheld": list(r.withheld),
            }
            for r in d.recipients
        ],
        "findings": [f.code for f in result.findings],
        "agreement": d.agreement_version,
        **({"handling": list(d.handling_conditions)} if d.handling_conditions else {}),
        **({"left_out": {left.node_id: left.reason for left in d.not_shared_with}} if d.not_shared_with else {}),
        **({"advice": [_advice(a) for a in d.advice_sought]} if d.advice_sought else {}),
    }


def _advice(advice: summary_pb2.AdviceSought) -> dict[str, str]:
    return {
        "role": advice.from_role,
        "by": advice.adviser.name or advice.adviser.id,
        "on": dates.iso(advice.on) if advice.on.year else "",
        "advice": advice.advice,
    }


def _for_every_earlier_recipient(summary: summary_pb2.RiskSummary) -> bool:
    """A later version that tells of a decrease, a resolution or a closure intent goes to
    everyone who had an earlier one, whatever kind it is sent as (domain.md §6 rule 10; UK
    GDPR Art 19). A first version has no earlier recipients to look up."""
    return summary.version > 1 and (
        summary.HasField("closure_intent") or any(i.direction in EASED for i in summary.risk_items)
    )


class Sharing:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.withdrawals = Withdrawals(ctx)
        # Whether an assessment stands, as SQL with its parameters: made once for the code lists
        # in use (a SIGHUP may change them), as every share asks.
        self._state = (ctx.policy.codes, own_assessments.state_of(ctx.policy.codes))

    def _standing(self, codes: CodeLists) -> tuple[str, tuple[str, ...]]:
        if self._state[0] is not codes:
            self._state = (codes, own_assessments.state_of(codes))
        return self._state[1]

    async def holders(self, summary_id: str) -> list[str]:
        """The agencies that hold a version of the summary: a later one goes to each (UK GDPR
        Art 19), but not to one that was asked to erase it and was sent nothing since."""
        where = await standing(self.ctx.store.fetchall, summary_id)
        return sorted(node for node, stands in where.items() if stands.state != "erased")

    async def _assessment(self, assessment_id: str, codes: CodeLists) -> tuple[summary_pb2.RiskSummary, bool]:
        """The assessment, with everyone its case protects (now, not only when it was recorded)
        or protected by their role marked so; and whether its case is still open."""
        state, retracting = self._standing(codes)
        row = self.ctx.store.lookup(
            "SELECT a.body, c.status, (SELECT group_concat(hex(p.token)) FROM case_people p "
            f"WHERE p.case_id = a.case_id AND p.protect_identity), {state} "
            "FROM assessments a JOIN cases c ON c.case_id = a.case_id WHERE a.assessment_id = ?",
            (*retracting, assessment_id),
        )
        if row is None:
            raise not_found(f"no assessment {assessment_id!r} at this node")
        if row[3] != "current":
            raise await own_assessments.refused_share(self.ctx.store.fetchone, assessment_id, row[3], retracting)
        assessment = summary_pb2.RiskSummary.FromString(row[0])
        protected = {bytes.fromhex(t) for t in row[2].split(",")} if row[2] else set()
        for person in assessment.people:  # domain.md §6 rule 13: the policy leaves out whoever is marked
            if person.link_token in protected or protected_role(codes, person.role_in_risk):
                person.protect_identity = True
        return assessment, row[1] == "open"

    async def _recipients(
        self,
        kind: int,
        assessment: summary_pb2.RiskSummary,
        tokens: list[bytes],
        only: list[str] | None,
        case_open: bool,
    ) -> tuple[list[str], frozenset[str]]:
        """Whom it goes to, and which of them it must reach: those that had an earlier version."""
        if only is not None:
            return only, frozenset()
        if not case_open:  # no longer linked to the family: what it sends goes to those who had the summary
            prior = await self._recipients_after_closing(kind, assessment.summary_id)
            return prior, frozenset(prior)
        linked = set(await self.ctx.resolve(tokens))
        if kind == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE and not _for_every_earlier_recipient(assessment):
            return sorted(linked), frozenset()
        prior = await self.holders(assessment.summary_id)
        if kind == envelope_pb2.MESSAGE_KIND_CORRECTION and not prior:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "nothing to correct: this summary was never shared")
        return sorted(linked | set(prior)), frozenset(prior)

    async def _recipients_after_closing(self, kind: int, summary_id: str) -> list[str]:
        if kind == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE:
            raise _case_closed()
        if not (prior := await self.holders(summary_id)):
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the case is closed and this summary was never shared: no one to tell",
            )
        return prior

    def _check_kind(self, kind: int, assessment: summary_pb2.RiskSummary) -> None:
        if kind not in SUMMARY_KINDS:
            raise invalid("kind must be SUMMARY_SHARE, RISK_CHANGE_NOTICE, HISTORICAL_UPDATE or CORRECTION")
        items = assessment.risk_items
        if kind == envelope_pb2.MESSAGE_KIND_HISTORICAL_UPDATE and not any(
            i.currency == summary_pb2.CURRENCY_HISTORICAL for i in items
        ):
            raise invalid("a 'now historical' update needs at least one risk item marked historical")
        if kind == envelope_pb2.MESSAGE_KIND_RISK_CHANGE_NOTICE and not any(
            i.direction in CHANGE_DIRECTIONS for i in items
        ):
            raise invalid("a risk change notice needs an item whose risk is new, increased, decreased or resolved")

    async def decide(
        self,
        request: node_api_pb2.ShareSummaryRequest,
        decision_id: str,
        only: list[str] | None = None,
        answering_request: bool = False,
    ) -> tuple[summary_pb2.RiskSummary, list[bytes], PolicyResult]:
        """Load the assessment, find its recipients, apply the policy. No writes."""
        kind = request.kind or envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE
        policy = self.ctx.policy  # one policy for the whole decision, though a SIGHUP replaces it meanwhile
        assessment, case_open = await self._assessment(request.assessment_id, policy.codes)
        if not assessment.jurisdiction:  # the case system named no other: this agency's own law
            assessment.jurisdiction = jurisdictions.of_node(self.ctx.me())
        self._check_kind(kind, assessment)
        tokens = routing_tokens(assessment)
        if not tokens:
            raise invalid("the assessment names nobody who may be shared about (all identities are protected)")
        recipient_ids, must_reach = await self._recipients(kind, assessment, tokens, only, case_open)
        directory = self.ctx.directory()
        recipients = [
            RecipientInfo(node_id=n, agency_type=directory.nodes[n].agency_type)
            for n in recipient_ids
            if n in directory.nodes and n != self.ctx.node_id
        ]
        result = decide(
            ShareRequest(
                assessment=assessment,
                decision=request.decision,
                actor=request.actor,
                sender_agency_type=self.ctx.me().agency_type,
                recipients=recipients,
                decision_id=decision_id,
                now_ms=self.ctx.clock.now_ms(),
                answering_request=answering_request,
                must_reach=must_reach,
            ),
            policy,
        )
        return assessment, tokens, result

    async def preview(self, request: node_api_pb2.ShareSummaryRequest) -> node_api_pb2.SharePreview:
        _, _, result = await self.decide(request, "preview")
        return node_api_pb2.SharePreview(
            outcome=result.outcome,
            findings=[finding(f) for f in result.findings],
            recipients=result.decision.recipients,
        )

    def _check_capacity(self) -> None:
        if not self.ctx.outbox.has_room():
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this node's outbox is full while recipients catch up; nothing was shared, retry shortly",
            )

    async def share(
        self,
        request: node_api_pb2.ShareSummaryRequest,
        only: list[str] | None = None,
        in_reply_to: str = "",
        wrap: bool = False,
    ) -> node_api_pb2.ShareSummaryResponse:
        """Decide, record and queue in one transaction. `wrap` sends the summary inside an
        information response (to `only`, answering `in_reply_to`). A request_id seen before
        is answered as it was then."""
        if request.request_id and (answered := await self._answered(request)) is not None:
            return answered
        self._check_capacity()
        share_id = self.ctx.new_id()
        assessment, tokens, result = await self.decide(request, share_id, only, answering_request=wrap)
        kind = request.kind or envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE
        message_kind = envelope_pb2.MESSAGE_KIND_INFORMATION_RESPONSE if wrap else kind

        answered_as = (
            workflow_pb2.INFORMATION_ANSWER_PARTIAL
            if result.outcome == summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL
            else workflow_pb2.INFORMATION_ANSWER_PROVIDED
        )

        def fill(recipient: str) -> Fill:
            payload = result.payloads[recipient]

            def write(body: envelope_pb2.MessageBody) -> None:
                if wrap:
                    body.information_response.CopyFrom(
                        workflow_pb2.InformationResponse(
                            request_message_id=in_reply_to,
                            answer=answered_as,
                            decision=result.decision,
                            summary=payload,
                        )
                    )
                else:
                    body.summary.CopyFrom(payload)

            return write

        sealed = await self.ctx.messenger.seal_each(
            sorted(result.payloads), message_kind, tokens, share_id, fill, request.actor, in_reply_to=in_reply_to
        )
        outcome = summary_pb2.DecisionOutcome.Name(result.outcome)

        def respond(statuses: list[node_api_pb2.DeliveryStatus]) -> node_api_pb2.ShareSummaryResponse:
            return node_api_pb2.ShareSummaryResponse(
                share_id=share_id,
                outcome=result.outcome,
                recipients=statuses,
                findings=[finding(f) for f in result.findings],
                decision=result.decision,
            )

        state, retracting = self._standing(self.ctx.policy.codes)
        try:
            async with self.ctx.store.tx() as tx:
                # A new summary goes from an open case, and an assessment that still stands: both
                # checked again where it is written (a close, a later version or a withdrawal may
                # have committed since it was decided), in the statement that records it.
                recorded = await tx.execute(
                    "INSERT INTO shares(share_id, assessment_id, created_at_ms, outcome, decision, kind, request_id) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE (NOT ? OR EXISTS (SELECT 1 FROM assessments a JOIN cases c "
                    "ON c.case_id = a.case_id WHERE a.assessment_id = ? AND c.status = 'open')) "
                    f"AND (SELECT {state} FROM assessments a WHERE a.assessment_id = ?) = 'current'",
                    (
                        share_id,
                        request.assessment_id,
                        tx.now_ms,
                        outcome,
                        result.decision.SerializeToString(),
                        kind,
                        request.request_id or None,
                        kind == envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE and only is None,
                        request.assessment_id,
                        *retracting,
                        request.assessment_id,
                    ),
                )
                if not recorded.rowcount:
                    (now,) = await tx.fetchone(
                        f"SELECT {state} FROM assessments a WHERE a.assessment_id = ?",
                        (*retracting, request.assessment_id),
                    )
                    if now != "current":
                        raise await own_assessments.refused_share(tx.fetchone, request.assessment_id, now, retracting)
                    raise _case_closed()
                await tx.audit(
                    "share.decision",
                    request.actor,
                    tokens=tokens,
                    summary_id=assessment.summary_id,
                    decision=outcome,
                    lawful_ground=lawful_ground(result.decision),
                    rationale=result.decision.rationale,
                    detail=decision_detail(share_id, result, message_kind, assessment.jurisdiction),
                )
                statuses = await self.ctx.messenger.queue(tx, sealed, share_id, request.actor, assessment.summary_id)
                # The answer to `only`'s request, by the message that carries it.
                if wrap and only and (queued := [s for s in statuses if s.state == "queued"]):
                    await answers.answered(tx, in_reply_to, only[0], answered_as, queued[0].message_id)
                if request.request_id:  # kept to answer a repeat of this call
                    answer = respond(statuses).SerializeToString()
                    await tx.execute("UPDATE shares SET response = ? WHERE share_id = ?", (answer, share_id))
        except sqlite3.IntegrityError as exc:
            if "shares.request_id" not in str(exc):
                raise
            if (answered := await self._answered(request)) is not None:  # a call racing this one shared first
                return answered
            raise ApiError(
                grpc.StatusCode.ABORTED,
                f"another call with request_id {request.request_id!r} is sharing now; repeat this one for its answer",
            ) from None
        await self.ctx.changed()
        log.info("share", share_id=share_id, outcome=outcome, recipients=len(sealed), kind=kind_name(message_kind))
        return respond(statuses)

    async def _answered(self, request: node_api_pb2.ShareSummaryRequest) -> node_api_pb2.ShareSummaryResponse | None:
        """The answer given to an earlier call with this request's request_id, if any."""
        repeats.check_request_id(request.request_id)
        row = await self.ctx.store.fetchone(
            "SELECT assessment_id, kind, response FROM shares WHERE request_id = ?", (request.request_id,)
        )
        if row is None:
            if await repeats.answered_with(self.ctx.store.fetchone, request.request_id):
                raise repeats.used_already(request.request_id)
            return None
        if (row[0], row[1]) != (request.assessment_id, request.kind or envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE):
            raise repeats.used_already(request.request_id)
        return node_api_pb2.ShareSummaryResponse.FromString(row[2])

    async def withdraw(self, request: node_api_pb2.WithdrawSummaryRequest) -> node_api_pb2.ShareSummaryResponse:
        return await self.withdrawals.withdraw(request)

    async def share_status(self, share_id: str) -> node_api_pb2.ShareStatus:
        share = await self.ctx.store.fetchone("SELECT outcome FROM shares WHERE share_id = ?", (share_id,))
        rows = await self.ctx.store.fetchall(
            "SELECT recipient, message_id, state, attempts, sent_at_ms, delivered_at_ms, reason, follow_up, "
            "followed_up_at_ms FROM outbox WHERE share_id = ? ORDER BY recipient",
            (share_id,),
        )
        if share is None and not rows:
            raise not_found(f"no share {share_id!r} at this node")
        recipients = [
            node_api_pb2.DeliveryStatus(
                node_id=r,
                message_id=m,
                state=s,
                attempts=a,
                sent_at_ms=sent or 0,
                delivered_at_ms=done or 0,
                reason=reason,
                follow_up=note or "",
                followed_up_at_ms=noted or 0,
            )
            for r, m, s, a, sent, done, reason, note, noted in rows
        ]
        withdrawal = await self.ctx.store.fetchone(
            "SELECT ground, erase FROM withdrawals WHERE share_id = ?", (share_id,)
        ) or ("", False)
        if not withdrawal[0] and rows:  # a summary's: has it been withdrawn from any of them since?
            since = dict(
                await self.ctx.store.fetchall(
                    "SELECT recipient, min(share_id) FROM outbox INDEXED BY outbox_by_summary "
                    "WHERE summary_id = (SELECT summary_id FROM outbox WHERE message_id = ?) "
                    f"AND kind = {envelope_pb2.MESSAGE_KIND_WITHDRAWAL} AND share_id > ? AND state != 'cancelled' "
                    "GROUP BY recipient",
                    (rows[0][1], share_id),
                )
            )
            for r in recipients:
                r.withdrawn_by = since.get(r.node_id, "")
        return node_api_pb2.ShareStatus(
            share_id=share_id,
            outcome=summary_pb2.DecisionOutcome.Value(share[0]) if share else summary_pb2.DECISION_OUTCOME_SHARED,
            recipients=recipients,
            settled=all(r.state not in LIVE for r in recipients),
            withdrawal_ground=withdrawal[0],
            erase=bool(withdrawal[1]),
        )

    async def deliveries(self, after_seq: int, limit: int) -> list[node_api_pb2.DeliveryEvent]:
        """Delivery state changes after event `after_seq`, read from the audit log where each
        was recorded, and numbered so that none is skipped across a restore."""
        numbers = await EventNumbers.load(self.ctx.store.fetchall)
        after = numbers.entry_after(after_seq)
        rows = await self.ctx.store.fetchall(
            "SELECT seq, ts_ms, event, entry FROM audit WHERE seq > ? AND event IN "
            "('message.queued', 'message.sent', 'message.deferred', 'message.delivered', 'message.undeliverable', "
            "'message.cancelled', 'message.recovered') "
            "ORDER BY seq LIMIT ?",
            (after, limit),
        )
        if not rows and after:
            (last,) = await self.ctx.store.fetchone("SELECT coalesce(max(seq), 0) FROM audit")
            if after > last:
                raise past_the_end(after_seq, numbers.of_entry(last), "delivery event")
        events = []
        for seq, ts_ms, event, entry in rows:
            data = json.loads(entry)
            detail = data["detail"]
            # One this node sent, given back after its store was put back to a copy: it stands
            # delivered again, as GetShareStatus says.
            recovered = event == "message.recovered"
            status = node_api_pb2.DeliveryStatus(
                node_id=data["counterpart"],
                message_id=data["message_id"],
                state="delivered" if recovered else event.removeprefix("message."),
                delivered_at_ms=detail.get("received_at_ms", 0) if recovered or event == "message.delivered" else 0,
                reason=RECOVERED.format(data["counterpart"]) if recovered else detail.get("reason", ""),
            )
            events.append(
                node_api_pb2.DeliveryEvent(
                    seq=numbers.of_entry(seq), share_id=detail.get("share_id", ""), status=status, at_ms=ts_ms
                )
            )
        return events
