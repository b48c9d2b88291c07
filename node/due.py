"""The duty view (mission anchors §8, 9: deadline-driven work with a person to act on it):
across every case, what this node must answer and by when, the reviews of its own
assessments that fall due (domain.md §6 rule 12), its messages that could not be delivered,
or are not delivered after some hours, and are not yet followed up another way, the agencies
still holding as current a summary it withdrew from the others as retracted, and what
other agencies owe it past the day it was needed: answers, and reviews of the summaries of
current risk they sent it (rule 12 flags an overdue review to recipients too). A duty
worker, or a scheduled `linkage due --json`, acts on it."""

from __future__ import annotations

from typing import Any

from linkage.calendar import given
from linkage.content import carried_summary
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2
from node import dates, own_assessments
from node.context import NodeContext
from node.errors import invalid
from node.store import Store
from node.withdrawals import standings

DEFAULT_DAYS = 7
MOST_DAYS = 366
MOST = 500  # items in one answer; `more` says when there are others
READ_AT_MOST = 5_000  # rows of each kind one call reads (oldest first), so its work is bounded
# Written into the SQL as numbers: SQLite uses a partial index only where the terms match its own.
AWAITING = (
    envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT,
    envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST,
    envelope_pb2.MESSAGE_KIND_CHALLENGE,
)


class _Reading:
    """One call's look-ups, each bounded; `cut` once any stopped at its bound."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cut = False

    async def rows(self, sql: str, values: tuple[object, ...] = ()) -> list[Any]:
        rows = await self.store.fetchall(f"{sql} LIMIT {READ_AT_MOST}", values)
        self.cut = self.cut or len(rows) == READ_AT_MOST
        return rows


class Due:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    async def list_due(self, request: node_api_pb2.DueRequest) -> node_api_pb2.DueItems:
        if request.within_days > MOST_DAYS:
            raise invalid(f"within_days is at most {MOST_DAYS}: the duty view looks up to a year ahead")
        reading = _Reading(self.ctx.store)
        day = dates.today(self.ctx.clock.now_ms())
        today, horizon = dates.iso(day), dates.iso(dates.add_days(day, request.within_days or DEFAULT_DAYS))
        answers = [i for i in await self._to_answer(reading, today) if not i.due.year or dates.iso(i.due) <= horizon]
        items = [
            *answers,
            *await self._reviews(reading, horizon, today),
            *await self._undelivered(reading),
            *await self._delayed(reading),
            *await self._owed(reading, today),
            *await self._reviews_owed(reading, today),
            *await self._still_held(reading),
        ]
        items.sort(key=lambda i: (not i.overdue, not i.due.year, dates.iso(i.due), i.message_id))
        listed = node_api_pb2.DueItems(items=items[:MOST], more=len(items) > MOST or reading.cut)
        async with self.ctx.store.tx() as tx:  # it gathers purposes and concerns about many families
            await tx.audit(
                "due.viewed",
                request.actor,
                detail={
                    "to_answer": sum(
                        bool(i.message_id) and i.to_answer and not (i.undeliverable or i.delayed) for i in items
                    ),
                    "reviews": sum(bool(i.assessment_id) for i in items),
                    "undeliverable": sum(i.undeliverable for i in items),
                    "delayed": sum(i.delayed for i in items),
                    "owed": sum(not i.to_answer and not i.review_owed for i in items),
                    "reviews_owed": sum(i.review_owed for i in items),
                    "still_held": sum(i.still_held for i in items),
                },
            )
        return listed

    async def _to_answer(self, reading: _Reading, today: str) -> list[node_api_pb2.DueItem]:
        kinds = ", ".join(str(k) for k in AWAITING)
        rows = await reading.rows(
            "SELECT i.sender, i.message_id, b.signed FROM inbox i INDEXED BY inbox_awaiting_answer "
            f"JOIN inbox_bodies b ON b.seq = i.seq WHERE i.answer = 0 AND i.kind IN ({kinds}) ORDER BY i.seq"
        )
        items = []
        for sender, message_id, signed in rows:
            body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
            due, what = _asked(body)
            if body.kind == envelope_pb2.MESSAGE_KIND_CLOSURE_INTENT and dates.iso(due) < today:
                continue  # the proposer may close once the day has passed: nothing left to answer
            items.append(self._item(body.kind, True, message_id, sender, "", due, what, today))
        return items

    async def _reviews(self, reading: _Reading, horizon: str, today: str) -> list[node_api_pb2.DueItem]:
        """This node's own assessments of current risk to review by the horizon: the latest
        version of each summary, not retracted since, in a case still open."""
        state, params = own_assessments.state_of(self.ctx.policy.codes)
        rows = await reading.rows(
            "SELECT a.assessment_id, a.case_id, a.review_date, a.body FROM assessments a "
            "INDEXED BY assessments_by_review JOIN cases c ON c.case_id = a.case_id "
            f"WHERE a.review_date IS NOT NULL AND a.review_date <= ? AND c.status = 'open' AND {state} = 'current' "
            "ORDER BY a.review_date",
            (horizon, *params),
        )
        return [
            node_api_pb2.DueItem(
                to_answer=True,
                case_id=case_id,
                due=dates.parse(review_date),
                overdue=review_date < today,
                what=summary_pb2.RiskSummary.FromString(body).headline,
                assessment_id=assessment_id,
            )
            for assessment_id, case_id, review_date, body in rows
        ]

    async def _undelivered(self, reading: _Reading) -> list[node_api_pb2.DueItem]:
        """This node's messages that could not be delivered and are not yet followed up another
        way (read notifications aside: nobody need be told of those)."""
        rows = await reading.rows(
            "SELECT message_id, recipient, kind, reason FROM outbox INDEXED BY outbox_to_follow_up "
            "WHERE state = 'undeliverable' AND followed_up_at_ms IS NULL "
            f"AND kind != {envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION} ORDER BY created_at_ms"
        )
        return [self._not_delivered(m, recipient, kind, reason, delayed=False) for m, recipient, kind, reason in rows]

    async def _delayed(self, reading: _Reading) -> list[node_api_pb2.DueItem]:
        """This node's messages still not delivered after [delivery] escalate_after_hours and
        not followed up: the agency may not know yet (a recipient away, a gateway down)."""
        after_ms = self.ctx.outbox.settings.escalate_after_ms
        if not after_ms:
            return []
        now = self.ctx.clock.now_ms()
        rows = await reading.rows(
            # A message queued again for a recipient whose store was put back is late from then.
            "SELECT message_id, recipient, kind, state, attempts, reason, "
            "COALESCE(queued_again_at_ms, created_at_ms) AS since "
            "FROM outbox INDEXED BY outbox_due "
            "WHERE state IN ('queued', 'sent') AND since < ? AND followed_up_at_ms IS NULL "
            f"AND kind != {envelope_pb2.MESSAGE_KIND_READ_NOTIFICATION} ORDER BY since",
            (now - after_ms,),
        )
        return [
            self._not_delivered(
                message_id,
                recipient,
                kind,
                # With why, where it is known: a recipient deferring it, for the two clocks.
                f"not delivered after {(now - since) // 3_600_000} h ({state}, {attempts} attempt(s))"
                + (f": {reason}" if reason else ""),
                delayed=True,
            )
            for message_id, recipient, kind, state, attempts, reason, since in rows
        ]

    def _not_delivered(
        self, message_id: str, recipient: str, kind: int, what: str, delayed: bool
    ) -> node_api_pb2.DueItem:
        """A message the agency must be told of another way: undeliverable, or delayed."""
        item = self._item(kind, True, message_id, recipient, "", summary_pb2.Date(), what, "")
        item.overdue = True  # it has not arrived: the most urgent kind of late
        item.undeliverable, item.delayed = not delayed, delayed
        return item

    async def _owed(self, reading: _Reading, today: str) -> list[node_api_pb2.DueItem]:
        requests = await reading.rows(
            "SELECT a.message_id, a.node_id, r.case_id, r.needed_by, r.purpose FROM info_requests_asked a "
            "INDEXED BY info_requests_unanswered JOIN info_requests r ON r.request_id = a.request_id "
            "WHERE a.answer = 0 AND r.needed_by != '' AND r.needed_by < ?",
            (today,),
        )
        challenges = await reading.rows(
            "SELECT message_id, node_id, case_id, respond_by, concern FROM challenges "
            "INDEXED BY challenges_unanswered WHERE answer = 0 AND respond_by != '' AND respond_by < ?",
            (today,),
        )
        return [
            self._item(kind, False, message_id, node, case_id, dates.parse(due), what, today)
            for kind, rows in (
                (envelope_pb2.MESSAGE_KIND_INFORMATION_REQUEST, requests),
                (envelope_pb2.MESSAGE_KIND_CHALLENGE, challenges),
            )
            for message_id, node, case_id, due, what in rows
        ]

    async def _reviews_owed(self, reading: _Reading, today: str) -> list[node_api_pb2.DueItem]:
        """Summaries of current risk other agencies sent, still live, whose review date has
        passed, about someone in a case this node has open (the first such case named)."""
        rows = await reading.rows(
            "SELECT i.kind, i.message_id, i.sender, i.review_date, b.signed, (SELECT c.case_id FROM inbox_tokens t "
            "JOIN case_people p ON p.token = t.token JOIN cases c ON c.case_id = p.case_id "
            "WHERE t.inbox_seq = i.seq AND c.status = 'open' LIMIT 1) AS open_case "
            "FROM inbox i INDEXED BY inbox_reviews JOIN inbox_bodies b ON b.seq = i.seq "
            "WHERE i.review_date IS NOT NULL AND i.state IN ('new', 'read') AND i.review_date < ? "
            "AND open_case IS NOT NULL ORDER BY i.review_date",
            (today,),
        )
        items = []
        for kind, message_id, sender, review_date, signed, case_id in rows:
            body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(signed).body)
            summary = carried_summary(body) or summary_pb2.RiskSummary()  # a review date means it carries one
            item = self._item(
                kind, False, message_id, sender, case_id, dates.parse(review_date), summary.headline, today
            )
            item.review_owed = True
            items.append(item)
        return items

    async def _still_held(self, reading: _Reading) -> list[node_api_pb2.DueItem]:
        """Agencies that still hold, as current, a version of a summary this node withdrew
        since on a ground that retracts the assessment: the withdrawal went to others only.
        "Since" is by id, as this node makes them."""
        _, retracting = own_assessments.state_of(self.ctx.policy.codes)
        rows = await reading.rows(
            "SELECT w.summary_id, MAX(w.share_id), w.ground, w.at_ms, (SELECT a.case_id FROM assessments a "
            "INDEXED BY assessments_by_summary WHERE a.summary_id = w.summary_id LIMIT 1) FROM withdrawals w "
            f"WHERE w.ground IN ({','.join('?' * len(retracting))}) GROUP BY w.summary_id ORDER BY w.at_ms",
            retracting,
        )
        each = await standings(self.ctx.store.fetchall, [row[0] for row in rows])
        items = []
        for summary_id, retraction, ground, at_ms, case_id in rows:
            for node, stands in sorted(each.get(summary_id, {}).items()):
                if stands.state == "holds" and stands.version_share < retraction:
                    what = f"withdrawn as {ground} on {dates.iso(dates.today(at_ms))}, from the other agencies only"
                    item = self._item(
                        envelope_pb2.MESSAGE_KIND_WITHDRAWAL,
                        True,
                        "",
                        node,
                        case_id or "",
                        summary_pb2.Date(),
                        what,
                        "",
                    )
                    item.overdue, item.still_held, item.summary_id = True, True, summary_id
                    items.append(item)
        return items

    def _item(
        self,
        kind: int,
        to_answer: bool,
        message_id: str,
        node: str,
        case_id: str,
        due: summary_pb2.Date,
        what: str,
        today: str,
    ) -> node_api_pb2.DueItem:
        return node_api_pb2.DueItem(
            kind=kind,  # type: ignore[arg-type]
            to_answer=to_answer,
            message_id=message_id,
            node_id=node,
            agency_name=self.ctx.agency(node).agency_name,
            case_id=case_id,
            due=due if due.year else None,
            overdue=given(due) and dates.iso(due) < today,
            what=what,
        )


def _asked(body: envelope_pb2.MessageBody) -> tuple[summary_pb2.Date, str]:
    """When a received request, challenge or closure proposal is to be answered by, and its gist."""
    if body.HasField("information_request"):
        return body.information_request.needed_by, body.information_request.purpose
    if body.HasField("challenge"):
        return body.challenge.respond_by, body.challenge.concern
    intent = body.closure_intent
    return intent.respond_by, intent.note or f"proposes to close ({intent.intent.intent})"
