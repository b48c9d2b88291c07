"""The node's operations for case systems: open a case, record an assessment,
share a summary, read what was received. Each state change is one transaction
with its audit entries."""

from __future__ import annotations

import asyncio
import json

import grpc

from linkage import logs
from linkage.clock import Clock
from linkage.directory import TrustedDirectory
from linkage.envelope import seal
from linkage.ids import uuid7
from linkage.keys import MessageKeys
from linkage.reasons import Rejected
from linkage.tokens import IdentifierError, LinkageKey
from linkage.v1 import directory_pb2, envelope_pb2, node_api_pb2, summary_pb2
from node.backoff import backoff_ms
from node.errors import ApiError, invalid, not_found
from node.link import GatewayLink
from node.outbox import Outbox
from node.policy import Finding, PolicyContext, PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy.minimise import routing_tokens
from node.store import Store

MAX_PEOPLE_PER_CASE = 64

log = logs.get("node.casework")


def _finding(f: Finding) -> node_api_pb2.PolicyFinding:
    return node_api_pb2.PolicyFinding(code=f.code, message=f.message, severity=f.severity)


def _lawful_ground(decision: summary_pb2.ShareDecision) -> str:
    basis = decision.lawful_basis
    return ",".join(x for x in [*basis.art6, basis.art9, basis.dpa_condition, *decision.override_grounds] if x)


class Casework:
    def __init__(
        self,
        node_id: str,
        store: Store,
        link: GatewayLink,
        outbox: Outbox,
        trust: TrustedDirectory,
        keys: MessageKeys,
        linkage_key: LinkageKey,
        clock: Clock,
        policy: PolicyContext,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.link = link
        self.outbox = outbox
        self.trust = trust
        self.keys = keys
        self.linkage_key = linkage_key
        self.clock = clock
        self.policy = policy
        self.resubscribe = asyncio.Event()  # set when the gateway may lack some subscriptions

    async def subscribed_tokens(self) -> list[bytes]:
        rows = await self.store.fetchall(
            "SELECT DISTINCT p.token FROM case_people p JOIN cases c USING (case_id) WHERE c.status = 'open'"
        )
        return [bytes(r[0]) for r in rows]

    async def open_case(self, request: node_api_pb2.OpenCaseRequest) -> node_api_pb2.OpenCaseResponse:
        if not request.case_ref.strip() or len(request.case_ref) > 128:
            raise invalid("case_ref must be your case system's reference, 1-128 characters")
        if not request.people or len(request.people) > MAX_PEOPLE_PER_CASE:
            raise invalid(f"a case needs 1-{MAX_PEOPLE_PER_CASE} people")
        people: list[node_api_pb2.CasePerson] = []
        for n, person in enumerate(request.people):
            try:
                token = self.linkage_key.token(person.scheme, person.value)
            except IdentifierError as exc:
                raise invalid(f"people[{n}]: {exc}") from None
            people.append(
                node_api_pb2.CasePerson(
                    link_token=token,
                    role_in_risk=person.role_in_risk,
                    person_type=person.person_type,
                    relationship=person.relationship,
                    protect_identity=person.protect_identity,
                )
            )
        case_id = uuid7(self.clock.now_ms())
        tokens = [p.link_token for p in people]
        async with self.store.tx() as tx:
            await tx.execute(
                "INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES (?, ?, ?, 'open')",
                (case_id, request.case_ref, tx.now_ms),
            )
            await tx.db.executemany(
                "INSERT OR IGNORE INTO case_people(case_id, token, role_in_risk, person_type, relationship, "
                "protect_identity) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (case_id, p.link_token, p.role_in_risk, p.person_type, p.relationship, int(p.protect_identity))
                    for p in people
                ],
            )
            await tx.audit("case.opened", request.actor, tokens=tokens, detail={"case_id": case_id})
        await self._subscribe(tokens)
        log.info("case.opened", case_id=case_id, people=len(people))
        return node_api_pb2.OpenCaseResponse(case_id=case_id, people=people)

    async def _subscribe(self, tokens: list[bytes]) -> None:
        """Subscribe now if the gateway answers; otherwise the resubscriber keeps trying."""
        try:
            added = await self.link.subscribe(tokens)
        except grpc.aio.AioRpcError as exc:
            log.warning("subscribe.deferred", code=exc.code().name, tokens=len(tokens))
            self.resubscribe.set()
            return
        async with self.store.tx() as tx:
            await tx.audit("subscription.added", tokens=tokens, detail={"added": added})

    async def reassert_subscriptions(self) -> None:
        """Tell the gateway every token of every open case (idempotent)."""
        added = await self.link.subscribe(await self.subscribed_tokens())
        self.resubscribe.clear()
        if added:
            async with self.store.tx() as tx:
                await tx.audit("subscription.added", detail={"added": added, "reasserted": True})

    async def run_resubscriber(self) -> None:
        """Re-assert subscriptions, with back-off, until the gateway has them all."""
        attempt = 0
        while True:
            await self.resubscribe.wait()
            await self.link.connected.wait()
            try:
                await self.reassert_subscriptions()
                attempt = 0
            except grpc.aio.AioRpcError as exc:
                log.warning("subscribe.retry", code=exc.code().name, attempt=attempt)
                await asyncio.sleep(backoff_ms(attempt, 200, 30_000) / 1000)
                attempt += 1

    async def record_assessment(
        self, request: node_api_pb2.RecordAssessmentRequest
    ) -> node_api_pb2.RecordAssessmentResponse:
        case = await self.store.fetchone("SELECT status FROM cases WHERE case_id = ?", (request.case_id,))
        if case is None:
            raise not_found(f"no case {request.case_id!r} at this node; open the case first")
        if case[0] != "open":
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"case {request.case_id!r} is closed")
        rows = await self.store.fetchall("SELECT token FROM case_people WHERE case_id = ?", (request.case_id,))
        known = {bytes(r[0]) for r in rows}
        assessment = summary_pb2.RiskSummary()
        assessment.CopyFrom(request.assessment)
        if not assessment.people:
            raise invalid("assessment.people is empty: name the people it concerns by their link tokens")
        for n, person in enumerate(assessment.people):
            if person.link_token not in known:
                raise invalid(f"assessment.people[{n}] is not a person of case {request.case_id!r}")
        now = self.clock.now_ms()
        assessment_id = uuid7(now)
        if not assessment.summary_id:
            assessment.summary_id = assessment_id
        assessment.version = max(assessment.version, 1)
        assessment.originating_node = self.node_id
        assessment.author.CopyFrom(request.actor)
        entry = self.trust.current(now).nodes.get(self.node_id)
        assessment.agency_type = entry.agency_type if entry else ""
        async with self.store.tx() as tx:
            await tx.execute(
                "INSERT INTO assessments(assessment_id, case_id, recorded_at_ms, body) VALUES (?, ?, ?, ?)",
                (assessment_id, request.case_id, tx.now_ms, assessment.SerializeToString()),
            )
            await tx.audit(
                "assessment.recorded",
                request.actor,
                tokens=[p.link_token for p in assessment.people],
                summary_id=assessment.summary_id,
                detail={"assessment_id": assessment_id, "case_id": request.case_id},
            )
        return node_api_pb2.RecordAssessmentResponse(assessment_id=assessment_id)

    async def _decide(
        self, request: node_api_pb2.ShareSummaryRequest, share_id: str
    ) -> tuple[summary_pb2.RiskSummary, list[bytes], PolicyResult]:
        """Load the assessment, find the linked agencies, apply the policy. No writes."""
        row = await self.store.fetchone(
            "SELECT body FROM assessments WHERE assessment_id = ?", (request.assessment_id,)
        )
        if row is None:
            raise not_found(f"no assessment {request.assessment_id!r} at this node")
        assessment = summary_pb2.RiskSummary.FromString(row[0])
        tokens = routing_tokens(assessment)
        if not tokens:
            raise invalid("the assessment names nobody who may be shared about (all identities are protected)")
        try:
            recipient_ids = await self.link.resolve(tokens)
        except grpc.aio.AioRpcError as exc:
            busy = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED if busy else grpc.StatusCode.UNAVAILABLE,
                f"cannot reach the gateway to find the agencies linked to this family ({exc.code().name}); "
                "nothing was shared, try again",
            ) from None
        now = self.clock.now_ms()
        try:
            directory = self.trust.current(now)
        except Rejected as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, f"node cannot share: {exc}") from None
        recipients = [
            RecipientInfo(node_id=n, agency_type=directory.nodes[n].agency_type)
            for n in recipient_ids
            if n in directory.nodes
        ]
        me = directory.nodes.get(self.node_id)
        result = decide(
            ShareRequest(
                assessment=assessment,
                decision=request.decision,
                actor=request.actor,
                sender_agency_type=me.agency_type if me else "",
                recipients=recipients,
                decision_id=share_id,
                now_ms=now,
            ),
            self.policy,
        )
        return assessment, tokens, result

    async def preview(self, request: node_api_pb2.ShareSummaryRequest) -> node_api_pb2.SharePreview:
        _, _, result = await self._decide(request, "preview")
        return node_api_pb2.SharePreview(
            outcome=result.outcome,
            findings=[_finding(f) for f in result.findings],
            recipients=result.decision.recipients,
        )

    async def share(self, request: node_api_pb2.ShareSummaryRequest) -> node_api_pb2.ShareSummaryResponse:
        if await self.outbox.queued() >= self.outbox.settings.outbox_high_water:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this node's outbox is full while recipients catch up; nothing was shared, retry shortly",
            )
        share_id = uuid7(self.clock.now_ms())
        assessment, tokens, result = await self._decide(request, share_id)
        now = self.clock.now_ms()
        directory = self.trust.current(now)
        outgoing = []
        for recipient_id, payload in result.payloads.items():
            outgoing.append(
                (
                    recipient_id,
                    seal(
                        keys=self.keys,
                        sender_node=self.node_id,
                        recipient_node=recipient_id,
                        recipient_key=directory.sealing_key(recipient_id, now),
                        suite=directory.directory.suite,
                        message_id=uuid7(now),
                        link_tokens=tokens,
                        kind=envelope_pb2.MESSAGE_KIND_SUMMARY_SHARE,
                        created_at_ms=now,
                        share_id=share_id,
                        summary=payload,
                        ttl_ms=self.outbox.settings.undeliverable_after_ms,
                    ),
                )
            )
        outcome_name = summary_pb2.DecisionOutcome.Name(result.outcome)
        async with self.store.tx() as tx:
            await tx.execute(
                "INSERT INTO shares(share_id, assessment_id, created_at_ms, outcome, decision) VALUES (?, ?, ?, ?, ?)",
                (share_id, request.assessment_id, tx.now_ms, outcome_name, result.decision.SerializeToString()),
            )
            await tx.audit(
                "share.decision",
                request.actor,
                tokens=tokens,
                summary_id=assessment.summary_id,
                decision=outcome_name,
                lawful_ground=_lawful_ground(result.decision),
                rationale=result.decision.rationale,
                detail={
                    "share_id": share_id,
                    "consent_status": result.decision.consent_status,
                    "subject_informed": result.decision.subject_informed,
                    "approved_by": result.decision.approved_by.id,
                    "recipients": [
                        {
                            "node": r.node_id,
                            "data_categories": list(r.data_categories),
                            "fields": list(r.fields),
                            "withheld": list(r.withheld),
                        }
                        for r in result.decision.recipients
                    ],
                    "findings": [f.code for f in result.findings],
                    "agreement": result.decision.agreement_version,
                },
            )
            for recipient_id, out in outgoing:
                await tx.execute(
                    "INSERT INTO outbox(message_id, share_id, recipient, envelope, digest, state, "
                    "next_attempt_at_ms, created_at_ms) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        out.routing.message_id,
                        share_id,
                        recipient_id,
                        out.envelope.SerializeToString(),
                        out.digest,
                        tx.now_ms,
                        tx.now_ms,
                    ),
                )
                await tx.audit(
                    "message.queued",
                    request.actor,
                    tokens=tokens,
                    summary_id=assessment.summary_id,
                    message_id=out.routing.message_id,
                    counterpart=recipient_id,
                    detail={"share_id": share_id},
                )
        self.outbox.wake.set()
        await self.outbox.changed()
        log.info("share", share_id=share_id, outcome=outcome_name, recipients=len(outgoing))
        return node_api_pb2.ShareSummaryResponse(
            share_id=share_id,
            outcome=result.outcome,
            recipients=[
                node_api_pb2.DeliveryStatus(node_id=r, message_id=o.routing.message_id, state="queued")
                for r, o in outgoing
            ],
            findings=[_finding(f) for f in result.findings],
            decision=result.decision,
        )

    async def share_status(self, share_id: str) -> node_api_pb2.ShareStatus:
        share = await self.store.fetchone("SELECT outcome FROM shares WHERE share_id = ?", (share_id,))
        if share is None:
            raise not_found(f"no share {share_id!r} at this node")
        rows = await self.store.fetchall(
            "SELECT recipient, message_id, state, attempts, sent_at_ms, delivered_at_ms, reason FROM outbox "
            "WHERE share_id = ? ORDER BY recipient",
            (share_id,),
        )
        recipients = [
            node_api_pb2.DeliveryStatus(
                node_id=r,
                message_id=m,
                state=s,
                attempts=a,
                sent_at_ms=sent or 0,
                delivered_at_ms=done or 0,
                reason=reason,
            )
            for r, m, s, a, sent, done, reason in rows
        ]
        return node_api_pb2.ShareStatus(
            share_id=share_id,
            outcome=summary_pb2.DecisionOutcome.Value(share[0]),
            recipients=recipients,
            settled=all(r.state in ("delivered", "undeliverable") for r in recipients),
        )

    async def deliveries(self, after_seq: int, limit: int) -> list[node_api_pb2.DeliveryEvent]:
        """Delivery state changes, read from the audit log where each was recorded."""
        rows = await self.store.fetchall(
            "SELECT seq, ts_ms, event, entry FROM audit WHERE seq > ? AND event IN "
            "('message.queued', 'message.sent', 'message.delivered', 'message.undeliverable') ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        events = []
        for seq, ts_ms, event, entry in rows:
            data = json.loads(entry)
            detail = data["detail"]
            status = node_api_pb2.DeliveryStatus(
                node_id=data["counterpart"],
                message_id=data["message_id"],
                state=event.removeprefix("message."),
                delivered_at_ms=detail.get("received_at_ms", 0) if event == "message.delivered" else 0,
                reason=detail.get("reason", ""),
            )
            events.append(
                node_api_pb2.DeliveryEvent(seq=seq, share_id=detail.get("share_id", ""), status=status, at_ms=ts_ms)
            )
        return events

    async def received(self, after_seq: int, limit: int, token: bytes = b"") -> list[node_api_pb2.ReceivedSummary]:
        if token:
            rows = await self.store.fetchall(
                "SELECT i.seq, i.sender, i.message_id, i.received_at_ms, i.kind, i.share_id, i.signed FROM inbox i "
                "JOIN inbox_tokens t ON t.inbox_seq = i.seq WHERE t.token = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                (token, after_seq, limit),
            )
        else:
            rows = await self.store.fetchall(
                "SELECT seq, sender, message_id, received_at_ms, kind, share_id, signed FROM inbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
        now = self.clock.now_ms()
        nodes = self.trust.current(now).nodes
        items = []
        for seq, sender, message_id, received_at, kind, share_id, signed in rows:
            body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
            entry = nodes.get(sender, directory_pb2.NodeEntry())
            items.append(
                node_api_pb2.ReceivedSummary(
                    seq=seq,
                    message_id=message_id,
                    sender_node=sender,
                    sender_agency_name=entry.agency_name,
                    sender_agency_type=entry.agency_type,
                    received_at_ms=received_at,
                    kind=kind,
                    share_id=share_id,
                    summary=body.summary,
                )
            )
        return items
