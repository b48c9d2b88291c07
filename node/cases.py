"""Cases and family links: open a case with a family's people, add or remove a
person, find out which other agencies are involved, and record assessments (closing
a case is node/closures.py). The node subscribes and unsubscribes at the gateway to
match, and tells co-involved agencies when it joins or leaves a family link."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from linkage import jurisdictions, logs
from linkage.backoff import backoff_ms
from linkage.tokens import MAX_TOKENS_PER_MESSAGE, TOKEN_LEN, IdentifierError
from linkage.v1 import node_api_pb2, summary_pb2
from linkage.writability import log_failure
from node import dates, involvement, repeats
from node.context import NodeContext
from node.errors import ApiError, invalid, not_found
from node.policy.rules import date_problems, protected_role
from node.store import FetchAll, FetchOne, Tx

MAX_PEOPLE_PER_CASE = MAX_TOKENS_PER_MESSAGE  # everything about a case goes in messages that name them all
log = logs.get("node.cases")
# Whether an open case names the token bound as ?1.
OPEN_CASE_NAMES = (
    "EXISTS (SELECT 1 FROM case_people p JOIN cases c USING (case_id) WHERE p.token = ?1 AND c.status = 'open')"
)


def failed(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def public_tokens(people: Iterable[node_api_pb2.CasePerson]) -> list[bytes]:
    """The link tokens of those whose identity is not protected: only they are ever named
    to another agency (in a message, a notice or a question to the gateway)."""
    return [p.link_token for p in people if not p.protect_identity]


@dataclass
class _Linked:
    """A subscription.added audit entry: subscriptions the gateway took, to be recorded."""

    actor: summary_pb2.Practitioner | None
    detail: dict[str, Any]
    tokens: list[bytes] = field(default_factory=list)


class Cases:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.resubscribe = asyncio.Event()  # set when the gateway may lack some subscriptions
        self.in_sync = asyncio.Event()  # set when the gateway has every subscription
        self._asked = 0  # times the resubscriber was asked for a pass (`_pass_due`)
        self._unsubscribing = 0  # times subscriptions were begun to be ended (`_unsubscribe`)
        self._ending = asyncio.Lock()  # one round of ending at a time: a close's and the resubscriber's
        self._unaudited: list[_Linked] = []  # subscriptions the gateway took whose entries the store refused
        ctx.store.writability.on_change_run(self._writable_again)
        self.notices = involvement.InvolvementNotices(ctx, ready=self.in_sync, after_waiting=self.end_subscriptions)

    # -- people and tokens ----------------------------------------------------

    def person_token(self, person: node_api_pb2.PersonIdentifier, where: str = "person") -> bytes:
        """A person's link token, from their identifier (never kept)."""
        try:
            return self.ctx.linkage_key.token(person.scheme, person.value)
        except IdentifierError as exc:
            raise invalid(f"{where}: {exc}") from None

    def _person(self, where: str, person: node_api_pb2.PersonIdentifier) -> node_api_pb2.CasePerson:
        """`where`: the request's field that holds it, to name in an error."""
        token = self.person_token(person, where)
        for name, value in (
            ("role_in_risk", person.role_in_risk),
            ("person_type", person.person_type),
            ("identity_basis", person.identity_basis),
        ):
            if value and not self.ctx.policy.codes.has(name, value):
                raise invalid(
                    f"{where}: {name} '{value}' is not in the code list; use one of "
                    + ", ".join(self.ctx.policy.codes.codes(name))
                )
        return node_api_pb2.CasePerson(
            link_token=token,
            role_in_risk=person.role_in_risk,
            person_type=person.person_type,
            relationship=person.relationship,
            protect_identity=person.protect_identity or protected_role(self.ctx.policy.codes, person.role_in_risk),
            identity_basis=person.identity_basis,
        )

    async def people(self, case_id: str, fetchall: FetchAll | None = None) -> list[node_api_pb2.CasePerson]:
        rows = await (fetchall or self.ctx.store.fetchall)(
            "SELECT token, role_in_risk, person_type, relationship, protect_identity, identity_basis "
            "FROM case_people WHERE case_id = ? ORDER BY token",
            (case_id,),
        )
        return [
            node_api_pb2.CasePerson(
                link_token=bytes(t),
                role_in_risk=r,
                person_type=p,
                relationship=rel,
                protect_identity=bool(pi),
                identity_basis=basis,
            )
            for t, r, p, rel, pi, basis in rows
        ]

    async def open_case_row(self, case_id: str, fetchone: FetchOne | None = None) -> None:
        """NOT_FOUND or FAILED_PRECONDITION unless the case is open: as committed, or, with a
        transaction's `fetchone`, where the write goes (a close may have committed meanwhile)."""
        row = await (fetchone or self.ctx.store.fetchone)("SELECT status FROM cases WHERE case_id = ?", (case_id,))
        if row is None:
            raise not_found(f"no case {case_id!r} at this node; open the case first")
        if row[0] != "open":
            raise failed(f"case {case_id!r} is closed")

    async def subscribed_tokens(self) -> list[bytes]:
        rows = await self.ctx.store.fetchall(
            "SELECT DISTINCT p.token FROM case_people p JOIN cases c USING (case_id) WHERE c.status = 'open'"
        )
        return [bytes(r[0]) for r in rows]

    async def _insert_people(self, tx: Tx, case_id: str, people: list[node_api_pb2.CasePerson]) -> None:
        await tx.executemany(
            "INSERT OR IGNORE INTO case_people(case_id, token, role_in_risk, person_type, relationship, "
            "protect_identity, identity_basis) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    case_id,
                    p.link_token,
                    p.role_in_risk,
                    p.person_type,
                    p.relationship,
                    int(p.protect_identity),
                    p.identity_basis,
                )
                for p in people
            ],
        )

    # -- opening, adding, removing -----------------------------------------------

    @repeats.answering(node_api_pb2.OpenCaseResponse)
    async def open_case(self, request: node_api_pb2.OpenCaseRequest) -> node_api_pb2.OpenCaseResponse:
        if not request.case_ref.strip() or len(request.case_ref) > 128:
            raise invalid("case_ref must be your case system's reference, 1-128 characters")
        if not request.people or len(request.people) > MAX_PEOPLE_PER_CASE:
            raise invalid(f"a case needs 1-{MAX_PEOPLE_PER_CASE} people")
        people = [self._person(f"people[{n}]", p) for n, p in enumerate(request.people)]
        first: dict[bytes, int] = {}
        for n, person in enumerate(people):
            if (earlier := first.setdefault(person.link_token, n)) != n:
                raise invalid(f"people[{n}] is the same person as people[{earlier}]: name each person once")
        case_id = self.ctx.new_id()
        async with self.ctx.store.tx() as tx:
            # Checked in the transaction, so two calls racing with one reference open one case.
            row = await (
                await tx.execute(
                    "SELECT case_id FROM cases WHERE case_ref = ? AND status = 'open'", (request.case_ref,)
                )
            ).fetchone()
            if row is not None:
                raise ApiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"case_ref {request.case_ref!r} is already open at this node as case {row[0]!r}; "
                    "add people to it with AddPerson",
                )
            await tx.execute(
                "INSERT INTO cases(case_id, case_ref, opened_at_ms, status) VALUES (?, ?, ?, 'open')",
                (case_id, request.case_ref, tx.now_ms),
            )
            await self._insert_people(tx, case_id, people)
            await tx.audit(
                "case.opened",
                request.actor,
                tokens=[p.link_token for p in people],
                detail={"case_id": case_id, "people": len(people)},
            )
            await involvement.record(tx, public_tokens(people), True, request.actor)
            opened = node_api_pb2.OpenCaseResponse(case_id=case_id, people=people)
            await repeats.keep(tx, request, opened)
        await self._joined(people, request.actor)
        log.info("case.opened", case_id=case_id, people=len(people))
        return opened

    @repeats.answering(node_api_pb2.OpenCaseResponse)
    async def add_person(self, request: node_api_pb2.AddPersonRequest) -> node_api_pb2.OpenCaseResponse:
        await self.open_case_row(request.case_id)
        person = self._person("person", request.person)
        await self._refuse_to_add(self.ctx.store.fetchone, request.case_id, person.link_token)
        async with self.ctx.store.tx() as tx:
            # Again where writes are serial: a call racing this one may have added them, or closed the case.
            await self.open_case_row(request.case_id, tx.fetchone)
            await self._refuse_to_add(tx.fetchone, request.case_id, person.link_token)
            await self._insert_people(tx, request.case_id, [person])
            await tx.audit(
                "case.person_added", request.actor, tokens=[person.link_token], detail={"case_id": request.case_id}
            )
            await involvement.record(tx, public_tokens([person]), True, request.actor)
            added = await self._case_now(tx, request)
        await self._joined([person], request.actor)
        return added

    @staticmethod
    async def _refuse_to_add(fetchone: FetchOne, case_id: str, token: bytes) -> None:
        held, present = await fetchone(
            "SELECT COUNT(*), COALESCE(SUM(token = ?), 0) FROM case_people WHERE case_id = ?", (token, case_id)
        )
        if present:
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"that person is already in case {case_id!r}; to record them differently "
                "(for example, to protect their identity), remove them and add them again",
            )
        if held >= MAX_PEOPLE_PER_CASE:  # a message names at most this many people
            raise failed(f"case {case_id!r} already has {MAX_PEOPLE_PER_CASE} people, the most a case holds")

    @repeats.answering(node_api_pb2.OpenCaseResponse)
    async def remove_person(self, request: node_api_pb2.RemovePersonRequest) -> node_api_pb2.OpenCaseResponse:
        await self.open_case_row(request.case_id)
        token = request.link_token
        if len(token) != TOKEN_LEN:
            raise invalid(f"link_token must be {TOKEN_LEN} bytes, as OpenCase returned it")
        async with self.ctx.store.tx() as tx:
            removed = await (
                await tx.execute(
                    "DELETE FROM case_people WHERE case_id = ? AND token = ? RETURNING protect_identity",
                    (request.case_id, token),
                )
            ).fetchone()
            if removed is None:  # not there, or a call racing this one removed them first
                raise not_found(f"that person is not in case {request.case_id!r}")
            await tx.execute("INSERT OR IGNORE INTO subscriptions_to_end(token) VALUES (?)", (token,))
            await tx.audit("case.person_removed", request.actor, tokens=[token], detail={"case_id": request.case_id})
            # Left, unless another open case names them; as one protected was never announced
            # as joining, their leaving is not announced either.
            still = await tx.fetchone(f"SELECT 1 WHERE {OPEN_CASE_NAMES}", (token,))
            await involvement.record(tx, [] if removed[0] or still else [token], False, request.actor)
            removed_from = await self._case_now(tx, request)
        await self.notices.send()
        await self.end_subscriptions(request.actor)
        return removed_from

    async def _case_now(
        self, tx: Tx, request: node_api_pb2.AddPersonRequest | node_api_pb2.RemovePersonRequest
    ) -> node_api_pb2.OpenCaseResponse:
        """The case's people as this change leaves them, kept to answer a repeat of the call."""
        now = node_api_pb2.OpenCaseResponse(
            case_id=request.case_id, people=await self.people(request.case_id, tx.fetchall)
        )
        await repeats.keep(tx, request, now)
        return now

    # -- subscriptions and involvement notices -------------------------------------

    async def _joined(self, people: list[node_api_pb2.CasePerson], actor: summary_pb2.Practitioner) -> None:
        """Subscribe, then tell the agencies already linked to these people that we have joined
        (the notice is recorded with the change: sent now, or once the gateway can answer)."""
        tokens = [p.link_token for p in people]
        try:
            added, _ = await self.ctx.link.subscribe(tokens)
        except grpc.aio.AioRpcError as exc:
            log.warning("subscribe.deferred", code=exc.code().name, tokens=len(tokens))
            self.in_sync.clear()
            self._pass_due()
            await self.notices.later()
            return
        # The case is open, and the call says so, whether or not its entry can be written now.
        await self._audit_links(_Linked(actor, {"added": added}, tokens))
        await self.notices.send()

    async def _audit_links(self, *linked: _Linked) -> None:
        """Record subscriptions the gateway took, with any whose entries the store refused
        before (marked `late`, with when they were taken). Refused again, they wait for the
        store to take writes again (`_writable_again`) or the next subscription, whichever
        comes first: but for a restart meanwhile, none goes unrecorded."""
        # Taken off the list: a call that runs meanwhile writes only its own, never these twice.
        entries, self._unaudited = [*self._unaudited, *linked], []
        if not entries:
            return
        try:
            async with self.ctx.store.tx() as tx:
                for entry in entries:
                    await tx.audit("subscription.added", entry.actor, tokens=entry.tokens, detail=entry.detail)
        except Exception as exc:
            for entry in linked:  # each keeps when it was taken, not when it is written at last
                entry.detail = {**entry.detail, "late": True, "taken_at_ms": self.ctx.clock.now_ms()}
            self._unaudited = entries + self._unaudited
            log_failure(
                log, "subscription.not_audited", exc, entries=len(entries), tokens=sum(len(e.tokens) for e in entries)
            )

    async def _writable_again(self) -> None:
        if self.ctx.store.writability.error is None:
            await self._audit_links()

    async def end_subscriptions(self, actor: summary_pb2.Practitioner | None = None) -> None:
        """End at the gateway the subscriptions recorded as ending (`subscriptions_to_end`,
        written with the change that ends them: a case closed, a person removed), but for
        people an open case still names. If the gateway does not take it, the resubscriber
        tries again, with back-off; a node stopped meanwhile ends them as it next connects."""
        try:
            await self._end_subscriptions(set(await self.subscribed_tokens()), actor)
        except grpc.aio.AioRpcError as exc:  # the call's own retries spent: the resubscriber's turn
            log.warning("unsubscribe.deferred", code=exc.code().name)
            self.ending_due()
        except Exception as exc:  # the store refused, say: the change that ended them was made all the same
            log_failure(log, "unsubscribe.deferred", exc)
            self.ending_due()

    def ending_due(self) -> None:
        """The resubscriber's next round ends the subscriptions recorded as ending: the
        gateway did not take their end, or no call here ended them (a case closed again from
        the copies given back after a restore, its people subscribed again as the restored
        store started)."""
        self._pass_due()

    def _pass_due(self) -> None:
        """Ask the resubscriber for a pass. One asked for while a pass is under way is made
        after it: that one read the open cases before the change that asks, so it proves
        nothing of it."""
        self._asked += 1
        self.resubscribe.set()

    async def reassert_subscriptions(self) -> None:
        """Tell the gateway every token of every open case (idempotent), end those recorded
        as ending (`end_subscriptions`), and end any it holds that this store does not know
        of: a store put back to a backup lacks the cases opened since, and a gateway put back
        holds subscriptions ended since (its total for this node says so), and this pass may
        have made again one ended while it ran, but for those a notice waiting to go needs
        (node/involvement.py)."""
        asked, unsubscribing = self._asked, self._unsubscribing
        tokens = await self.subscribed_tokens()
        added, total = await self.ctx.link.subscribe(tokens)
        # A subscription ended while the gateway was asked (a person taken out of a case, say)
        # may have been made again by this, which named them as the cases stood before.
        raced = self._unsubscribing != unsubscribing
        ended = await self._end_subscriptions(set(tokens), None)
        if raced or total - ended > len(tokens):
            await self._end_unknown()
        if asked == self._asked:  # none asked for while the gateway was asked: in step with it
            self.resubscribe.clear()
            self.in_sync.set()
        await self._audit_links(*([_Linked(None, {"added": added, "reasserted": True})] if added else []))

    async def _end_subscriptions(self, still: set[bytes], actor: summary_pb2.Practitioner | None) -> int:
        """End those recorded as ending but for those in `still`; how many the gateway held."""
        async with self._ending:
            return await self._end_recorded(still, actor)

    async def _end_recorded(self, still: set[bytes], actor: summary_pb2.Practitioner | None) -> int:
        ending = [bytes(t) for (t,) in await self.ctx.store.fetchall("SELECT token FROM subscriptions_to_end")]
        if not ending:
            return 0
        # An open case names the others again; a notice waiting to go needs its own a while yet.
        kept = await self.notices.keep([t for t in ending if t not in still])
        unused = [t for t in ending if t not in still and t not in kept]
        removed = await self._unsubscribe(unused)
        ended = set(unused)
        async with self.ctx.store.tx() as tx:
            # One kept for a case that has closed since it was read stays, for that close to end.
            await tx.executemany(
                f"DELETE FROM subscriptions_to_end WHERE token = ?1 AND (?2 OR {OPEN_CASE_NAMES})",
                [(t, t in ended) for t in ending],
            )
            if unused:
                detail = {"removed": removed} if actor is not None else {"removed": removed, "deferred": True}
                await tx.audit("subscription.removed", actor, tokens=unused, detail=detail)
        return removed

    async def _end_unknown(self) -> None:
        held = await self.ctx.link.subscriptions()
        known = set(await self.subscribed_tokens())  # read after: a case opened meanwhile is in it
        kept = await self.notices.keep([t for t in held if t not in known])
        unknown = [t for t in held if t not in known and t not in kept]
        if not unknown:
            return
        removed = await self._unsubscribe(unknown)
        log.warning("subscriptions.unknown_ended", held=len(held), removed=removed)
        async with self.ctx.store.tx() as tx:
            await tx.audit("subscription.removed", tokens=unknown, detail={"removed": removed, "unknown_here": True})

    async def _unsubscribe(self, tokens: list[bytes]) -> int:
        """End these subscriptions at the gateway; how many it held. One an open case has come
        to name while it was asked (a case opened meanwhile) is made again."""
        if not tokens:
            return 0
        self._unsubscribing += 1  # before it is asked: a pass asserting the others meanwhile must know
        removed = await self.ctx.link.unsubscribe(tokens)
        if again := set(tokens) & set(await self.subscribed_tokens()):
            await self.ctx.link.subscribe(again)
        return removed

    async def run_resubscriber(self) -> None:
        """Re-assert subscriptions, with back-off, until the gateway has them all."""
        attempt = 0
        while True:
            await self.resubscribe.wait()
            await self.ctx.link.connected.wait()
            try:
                await self.reassert_subscriptions()
                attempt = 0
            except grpc.aio.AioRpcError as exc:
                log.warning("subscribe.retry", code=exc.code().name, attempt=attempt)
                await asyncio.sleep(backoff_ms(attempt, 200, 30_000) / 1000)
                attempt += 1

    # -- discovery --------------------------------------------------------------------

    async def discover(self, request: node_api_pb2.CaseRequest) -> node_api_pb2.InvolvementResponse:
        await self.open_case_row(request.case_id)
        tokens = public_tokens(await self.people(request.case_id))
        per_node = involvement.by_agency(await self.ctx.discover(tokens, "nothing was recorded"))
        agencies = []
        for node_id in sorted(per_node):
            entry = self.ctx.agency(node_id)
            agencies.append(
                node_api_pb2.InvolvedAgency(
                    node_id=node_id,
                    agency_name=entry.agency_name,
                    agency_type=entry.agency_type,
                    contact_role=entry.contact_role,
                    link_tokens=per_node[node_id],
                    jurisdiction=jurisdictions.of_node(entry) if entry.agency_type else "",  # else not in the directory
                )
            )
        async with self.ctx.store.tx() as tx:
            await tx.audit(
                "involvement.discovered",
                request.actor,
                tokens=tokens,
                detail={"case_id": request.case_id, "agencies": sorted(per_node)},
            )
        return node_api_pb2.InvolvementResponse(agencies=agencies)

    # -- assessments --------------------------------------------------------------------

    async def _check_same_case(self, summary_id: str, case_id: str) -> None:
        """A new version of a summary comes from the case it was recorded in, shared or not:
        recipients take it as the next version of what they hold, whoever it is about, and
        it supersedes the versions before it in that case's chronology."""
        row = await self.ctx.store.fetchone(
            "SELECT case_id FROM assessments INDEXED BY assessments_by_summary WHERE summary_id = ? LIMIT 1",
            (summary_id,),
        )
        if row is not None and row[0] != case_id:
            raise invalid(
                f"summary_id {summary_id!r} was recorded in case {row[0]!r}: record its new versions in that case, "
                "or leave summary_id empty for a new summary"
            )

    @repeats.answering(node_api_pb2.RecordAssessmentResponse)
    async def record_assessment(
        self, request: node_api_pb2.RecordAssessmentRequest
    ) -> node_api_pb2.RecordAssessmentResponse:
        await self.open_case_row(request.case_id)
        known = {p.link_token: p.identity_basis for p in await self.people(request.case_id)}
        assessment = summary_pb2.RiskSummary()
        assessment.CopyFrom(request.assessment)
        if not assessment.people:
            raise invalid("assessment.people is empty: name the people it concerns by their link tokens")
        for n, person in enumerate(assessment.people):
            if person.link_token not in known:
                raise invalid(f"assessment.people[{n}] is not a person of case {request.case_id!r}")
            person.identity_basis = known[person.link_token]  # the case's record, not the caller's word
        named = {p.link_token for p in assessment.people}
        for n, item in enumerate(assessment.risk_items):
            if any(token not in named for token in item.concerns):  # else protection could not reach it
                raise invalid(f"assessment.risk_items[{n}].concerns names someone not in assessment.people")
        if problems := date_problems(assessment):
            raise invalid("; ".join(problems).capitalize())
        if assessment.summary_id:
            await self._check_same_case(assessment.summary_id, request.case_id)
        assessment_id = self.ctx.new_id()
        if not assessment.summary_id:
            assessment.summary_id = assessment_id
        assessment.originating_node = self.ctx.node_id
        assessment.author.CopyFrom(request.actor)
        assessment.agency_type = self.ctx.me().agency_type
        if assessment.jurisdiction and not self.ctx.policy.codes.has("jurisdiction", assessment.jurisdiction):
            raise invalid(
                f"assessment.jurisdiction {assessment.jurisdiction!r} is not a UK jurisdiction code; use one of "
                f"{', '.join(self.ctx.policy.codes.codes('jurisdiction'))}, or leave it empty for this agency's own"
            )
        async with self.ctx.store.tx() as tx:
            await self.open_case_row(request.case_id, tx.fetchone)  # again: it may have closed meanwhile
            (latest,) = await tx.fetchone(
                "SELECT MAX(version) FROM assessments WHERE summary_id = ?", (assessment.summary_id,)
            )
            assessment.version = max(assessment.version, (latest or 0) + 1)
            await tx.execute(
                "INSERT INTO assessments(assessment_id, case_id, recorded_at_ms, body, summary_id, version, "
                "review_date) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    assessment_id,
                    request.case_id,
                    tx.now_ms,
                    assessment.SerializeToString(),
                    assessment.summary_id,
                    assessment.version,
                    dates.review_due(assessment),
                ),
            )
            await tx.audit(
                "assessment.recorded",
                request.actor,
                tokens=[p.link_token for p in assessment.people],
                summary_id=assessment.summary_id,
                detail={"assessment_id": assessment_id, "case_id": request.case_id, "version": assessment.version},
            )
            recorded = node_api_pb2.RecordAssessmentResponse(
                assessment_id=assessment_id, summary_id=assessment.summary_id, version=assessment.version
            )
            await repeats.keep(tx, request, recorded)
        return recorded
