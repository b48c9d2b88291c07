"""Withdrawing a summary from everyone who holds it, or from some of them, on a ground that
decides whether each erases it (UK GDPR Arts 17 and 19; domain.md §3.8), and cancelling what of it has not
yet left this node."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from linkage import logs
from linkage.envelope import parse_routing
from linkage.v1 import envelope_pb2, node_api_pb2, summary_pb2, workflow_pb2
from node import answers, repeats
from node.context import NodeContext
from node.errors import ApiError, check_notes, invalid, not_found
from node.messaging import CARRIES_SUMMARY, kind_name, tokens_sent
from node.policy.rules import consent_absent
from node.store import FetchAll, FetchOne, Tx

log = logs.get("node.withdrawals")

# What a withdrawal on a breach ground tells whoever made it (UK GDPR Art 33).
BREACH_TO_ASSESS = node_api_pb2.PolicyFinding(
    code="breach_to_assess",
    severity="warning",
    message="sharing it was a personal data breach: tell your information governance officer now; the ICO must be "
    "told within 72 hours of your becoming aware of it unless it is unlikely to result in a risk to the people in it",
)


@dataclass(frozen=True)
class Standing:
    """Where a summary stands with one agency it went to."""

    state: Literal["holds", "withdrawn", "erased"]  # withdrawn: its copies kept, marked so
    withdrawal: str = ""  # the last withdrawal's share id
    version_share: str = ""  # holds: the share id of the version it holds


# Where summaries stand, in the order this node made its messages: for one (`= ?`), or many.
_STANDING = (
    "SELECT o.summary_id, o.recipient, o.kind, o.share_id, o.state, w.erase FROM outbox o "
    "INDEXED BY outbox_by_summary LEFT JOIN withdrawals w ON w.share_id = o.share_id "
    "WHERE o.summary_id {} ORDER BY o.summary_id, o.message_id"
)
_STANDING_OF_ONE = _STANDING.format("= ?")  # a share asks: cheaper than a list of one
_STANDING_OF_MANY = _STANDING.format("IN (SELECT value FROM json_each(?))")


async def standing(fetchall: FetchAll, summary_id: str) -> dict[str, Standing]:
    """Where the summary stands with each agency it went to, from this node's outbox in the
    order it made its messages, as their ids say (one given back after a restore is entered
    late; a clock set back meanwhile changes neither): a version
    (one cancelled before it left never reached them), or a withdrawal since, which erased
    it or not. (Withdrawals before migration 27 kept it.)"""
    return _stands(await fetchall(_STANDING_OF_ONE, (summary_id,))).get(summary_id, {})


async def standings(fetchall: FetchAll, summary_ids: list[str]) -> dict[str, dict[str, Standing]]:
    """`standing` for each of these summaries, read at once; one never sent is left out."""
    return _stands(await fetchall(_STANDING_OF_MANY, (json.dumps(summary_ids),)))


def _stands(rows: Iterable[Any]) -> dict[str, dict[str, Standing]]:
    each: dict[str, dict[str, Standing]] = {}
    for summary_id, recipient, kind, share_id, state, erase in rows:
        where = each.setdefault(summary_id, {})
        if kind == envelope_pb2.MESSAGE_KIND_WITHDRAWAL:
            if recipient in where:
                where[recipient] = Standing("erased" if erase else "withdrawn", share_id)
        elif kind in CARRIES_SUMMARY and state != "cancelled":
            where[recipient] = Standing("holds", version_share=share_id)
    return each


async def summary_tokens(fetchone: FetchOne, summary_id: str) -> list[bytes] | None:
    """The link tokens a summary went with (`tokens_sent`)."""
    return await tokens_sent(fetchone, "o.summary_id = ?", (summary_id,))


def _refuse_repeats(where: dict[str, Standing], recipients: list[str], summary_id: str, erase: bool) -> None:
    """A withdrawal from an agency, with nothing of the summary sent to it since, makes another
    one a repeat; unless this one asks it to erase the summary and the last one did not."""
    if repeats := [r for r in recipients if _repeat(where[r], erase)]:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"summary {summary_id!r} is already withdrawn (withdrawal {where[repeats[0]].withdrawal}; see "
            f"GetShareStatus) from {', '.join(repeats)}, and no version was sent there since",
        )


def _repeat(stands: Standing, erase: bool) -> bool:
    return stands.state == "erased" or (stands.state == "withdrawn" and not erase)


def _findings(
    breach: bool, withheld: set[str], unsent_to: set[str], still_held: list[str], ctx: NodeContext
) -> list[node_api_pb2.PolicyFinding]:
    """What the practitioner withdrawing a summary is told besides: a breach for IG to assess,
    the versions of it cancelled before they left, and the agencies that still hold as current
    an assessment this withdrawal says no longer stands."""
    findings = [BREACH_TO_ASSESS] if breach else []
    if still_held:
        agencies = ", ".join(ctx.agency(node).agency_name or node for node in still_held)
        findings.append(
            node_api_pb2.PolicyFinding(
                code="still_held",
                severity="warning",
                message=f"this ground says the assessment itself no longer stands, but {agencies} still hold it "
                "as current: withdraw it from them too",
            )
        )
    if withheld:
        agencies = ", ".join(sorted({ctx.agency(node).agency_name or node for node in unsent_to}))
        findings.append(
            node_api_pb2.PolicyFinding(
                code="versions_cancelled",
                severity="warning",
                message=f"{len(withheld)} message(s) of or about this summary were still waiting to be sent "
                f"(to {agencies}) and are cancelled: they will not be sent",
            )
        )
    return findings


def _to_reach(where: dict[str, Standing], erase: bool) -> list[str]:
    """The agencies a withdrawal that names none goes to: every one it is not a repeat for."""
    return [r for r in sorted(where) if not _repeat(where[r], erase)]


class Withdrawals:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    @repeats.answering(node_api_pb2.ShareSummaryResponse)
    async def withdraw(self, request: node_api_pb2.WithdrawSummaryRequest) -> node_api_pb2.ShareSummaryResponse:
        if not request.reason.strip():
            raise invalid("say why the summary is withdrawn; every recipient is told")
        check_notes(reason=request.reason)
        codes = self.ctx.policy.codes
        ground = codes.entry("withdrawal_ground", request.ground)
        if not ground:
            raise invalid(
                f"ground {request.ground!r} is not a withdrawal ground; use one of {codes.codes('withdrawal_ground')} "
                "(it decides whether every recipient erases the summary)"
            )
        erase, breach, retracts = bool(ground.get("erase")), bool(ground.get("breach")), bool(ground.get("retracts"))
        where = await standing(self.ctx.store.fetchall, request.summary_id)
        if not where:
            raise not_found(f"summary {request.summary_id!r} was never shared from this node")
        # Named agencies, or every one this withdrawal is not a repeat for.
        recipients = sorted(set(request.recipients)) or _to_reach(where, erase)
        if strangers := [r for r in recipients if r not in where]:
            raise invalid(
                f"summary {request.summary_id!r} never went to {', '.join(strangers)}; "
                f"it went to {', '.join(sorted(where))}"
            )
        _refuse_repeats(where, recipients or sorted(where), request.summary_id, erase)
        if ground.get("on_consent"):
            await self._shared_on_consent(request.summary_id, request.ground)
        tokens = await summary_tokens(self.ctx.store.fetchone, request.summary_id)
        if tokens is None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"summary {request.summary_id!r} was shared too long ago: retention has purged what it was sent "
                "with, so this node cannot address a withdrawal; tell its recipients another way",
            )
        share_id = self.ctx.new_id()
        withdrawal = workflow_pb2.Withdrawal(
            summary_id=request.summary_id, reason=request.reason, ground=request.ground, erase=erase
        )
        sealed = await self.ctx.messenger.seal_each(
            recipients,
            envelope_pb2.MESSAGE_KIND_WITHDRAWAL,
            tokens,
            share_id,
            lambda _: lambda body: body.withdrawal.CopyFrom(withdrawal),
            request.actor,
        )
        withheld: set[str] = set()  # its versions not yet sent: the outbox keeps them back meanwhile
        try:
            async with self.ctx.store.tx() as tx:
                # Again where writes are serial: a call racing this one may have withdrawn it meanwhile,
                # or, when no agency is named, sent a version to an agency this one would miss.
                now_where = await standing(tx.fetchall, request.summary_id)
                _refuse_repeats(now_where, recipients, request.summary_id, erase)
                missed = [] if request.recipients else [r for r in _to_reach(now_where, erase) if r not in recipients]
                if missed:
                    raise ApiError(
                        grpc.StatusCode.ABORTED,
                        f"summary {request.summary_id!r} went to {', '.join(missed)} while this withdrawal was "
                        "made, and it would not reach them: nothing was withdrawn; withdraw it again",
                    )
                await tx.execute(
                    "INSERT INTO withdrawals(share_id, summary_id, ground, erase, at_ms) VALUES (?, ?, ?, ?, ?)",
                    (share_id, request.summary_id, request.ground, erase, tx.now_ms),
                )
                unsent_to = await self._cancel_unsent(tx, request, recipients, share_id, erase, withheld)
                await tx.audit(
                    "summary.withdrawn",
                    request.actor,
                    tokens=tokens,
                    summary_id=request.summary_id,
                    rationale=request.reason,
                    detail={
                        "share_id": share_id,
                        "recipients": recipients,
                        "ground": request.ground,
                        "erase": erase,
                        "breach": breach,
                        "cancelled": sorted(withheld),
                    },
                )
                statuses = await self.ctx.messenger.queue(tx, sealed, share_id, request.actor, request.summary_id)
                # A ground that retracts the assessment, told to some of those that hold it only.
                still_held = [r for r, st in sorted(now_where.items()) if st.state == "holds" and r not in recipients]
                findings = _findings(breach, withheld, unsent_to, still_held if retracts else [], self.ctx)
                withdrawn = node_api_pb2.ShareSummaryResponse(share_id=share_id, recipients=statuses, findings=findings)
                await repeats.keep(tx, request, withdrawn)
        except BaseException:
            self.ctx.outbox.release(withheld)
            raise
        await self.ctx.changed()
        log.info(
            "summary.withdrawn",
            share_id=share_id,
            ground=request.ground,
            recipients=len(recipients),
            cancelled=len(withheld),
        )
        return withdrawn

    async def _cancel_unsent(
        self,
        tx: Tx,
        request: node_api_pb2.WithdrawSummaryRequest,
        recipients: list[str],
        withdrawal_id: str,
        erase: bool,
        withheld: set[str],
    ) -> set[str]:
        """A withdrawn summary does not leave after its withdrawal: each version of it still
        waiting to be sent (its recipient away, say) is cancelled, into `withheld`; and, when
        it is to be erased, each answer about it (its recipient would erase that on arrival).
        Returns the recipients they were for. One on its way to the gateway goes: its recipient
        erases it, or marks it withdrawn, when the withdrawal comes."""
        kinds = (*CARRIES_SUMMARY, *((envelope_pb2.MESSAGE_KIND_CLARIFICATION_RESPONSE,) if erase else ()))
        rows = await tx.fetchall(
            "SELECT o.message_id, o.share_id, o.recipient, o.kind, b.envelope FROM outbox o "
            "INDEXED BY outbox_by_summary JOIN outbox_bodies b ON b.seq = o.seq "
            f"WHERE o.summary_id = ? AND o.state = 'queued' AND o.kind IN ({','.join('?' * len(kinds))})",
            (request.summary_id, *kinds),
        )
        rows = [row for row in rows if row[2] in recipients]  # a withdrawal from some agencies keeps to them
        withheld |= self.ctx.outbox.withhold(row[0] for row in rows)
        if not withheld:
            return set()
        reason = f"not sent: the summary was withdrawn ({request.ground}) before this left the node"
        for message_id, thread, recipient, kind, envelope in rows:
            if message_id in withheld:
                await tx.execute(
                    "UPDATE outbox SET state = 'cancelled', reason = ? WHERE message_id = ?", (reason, message_id)
                )
                # An answer that never went leaves its request to be answered again: its sender never had it.
                reopened = await answers.answer_not_sent(tx, message_id)
                await tx.audit(  # naming whom it was about: a subject access report says it never went
                    "message.cancelled",
                    tokens=parse_routing(envelope_pb2.Envelope.FromString(envelope)).link_tokens,
                    message_id=message_id,
                    summary_id=request.summary_id,
                    counterpart=recipient,
                    detail={
                        "share_id": thread,
                        "kind": kind_name(kind),
                        "withdrawal": withdrawal_id,
                        "reason": reason,
                        "by": "sender",
                        **({"to_answer_again": reopened} if reopened else {}),
                    },
                )
        cancelled = set(withheld)
        tx.on_commit(lambda: self.ctx.outbox.cancelled(cancelled))
        return {recipient for message_id, _, recipient, _, _ in rows if message_id in cancelled}

    async def _shared_on_consent(self, summary_id: str, ground: str) -> None:
        """A ground that says consent was withdrawn needs a summary last shared on consent."""
        row = await self.ctx.store.fetchone(
            "SELECT s.decision FROM outbox o JOIN shares s ON s.share_id = o.share_id WHERE o.summary_id = ? "
            "ORDER BY o.message_id DESC LIMIT 1",
            (summary_id,),
        )
        decision = summary_pb2.ShareDecision.FromString(row[0]) if row is not None else summary_pb2.ShareDecision()
        consent = decision.consent_status
        if not consent or consent_absent(decision):
            raise invalid(
                f"ground {ground}: summary {summary_id!r} was last shared with consent {consent or 'unrecorded'}, "
                "not on consent; if sharing it was wrong, withdraw it as SHARED_IN_ERROR or NO_LAWFUL_BASIS"
            )
