"""Where one of this node's own assessments stands: current; superseded by a later version
of its summary; or withdrawn, its summary withdrawn since on a ground that retracts the
assessment itself (`retracts` in the code lists: not to be relied on, about the wrong
person), not only its sharing (sent in error, say, where the assessment still stands). The
chronology marks each own entry so, only a current one falls due for review, only a current
one is shared, and a case's list of its own assessments says where each stands."""

from __future__ import annotations

import grpc

from linkage.codelists import CodeLists
from linkage.v1 import node_api_pb2, summary_pb2
from node import dates
from node.context import NodeContext
from node.errors import ApiError, not_found
from node.store import FetchOne


def state_of(codes: CodeLists) -> tuple[str, tuple[str, ...]]:
    """An SQL expression for the state of assessment `a` ('current', 'superseded' or
    'withdrawn', as a received summary's), and its parameters. "Since" is by id: ids ascend
    as this node makes them, however its clock is set."""
    retracting = tuple(
        g for g in codes.codes("withdrawal_ground") if codes.entry("withdrawal_ground", g).get("retracts")
    )
    sql = (
        "CASE WHEN EXISTS (SELECT 1 FROM withdrawals w INDEXED BY withdrawals_by_summary "
        f"WHERE w.summary_id = a.summary_id AND w.ground IN ({','.join('?' * len(retracting))}) "
        "AND w.share_id > a.assessment_id LIMIT 1) THEN 'withdrawn' "
        "WHEN EXISTS (SELECT 1 FROM assessments b INDEXED BY assessments_by_summary "
        "WHERE b.summary_id = a.summary_id AND b.version > a.version LIMIT 1) THEN 'superseded' ELSE 'current' END"
    )
    return sql, retracting


async def refused_share(fetchone: FetchOne, assessment_id: str, state: str, retracting: tuple[str, ...]) -> ApiError:
    """Why an assessment that no longer stands (`state`, as `state_of` said with `retracting`)
    is not shared: its recipients would take it as the summary's newest version, over the
    later one, or over the retraction."""
    (summary_id,) = await fetchone("SELECT summary_id FROM assessments WHERE assessment_id = ?", (assessment_id,))
    if state == "superseded":
        (latest,) = await fetchone(
            "SELECT assessment_id FROM assessments INDEXED BY assessments_by_summary WHERE summary_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (summary_id,),
        )
        why = f"a later version of summary {summary_id!r} was recorded since ({latest!r}): share that one"
    else:
        (ground,) = await fetchone(  # the first retraction after it, whatever came later
            "SELECT ground FROM withdrawals INDEXED BY withdrawals_by_summary WHERE summary_id = ? "
            f"AND ground IN ({','.join('?' * len(retracting))}) AND share_id > ? ORDER BY share_id LIMIT 1",
            (summary_id, *retracting, assessment_id),
        )
        why = (
            f"summary {summary_id!r} was withdrawn since on {ground}, which retracts it: record a new version "
            "of it (with its summary_id) to share what stands now"
        )
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"assessment {assessment_id!r} no longer stands: {why}")


class OwnAssessments:
    """A case's own assessments, as the case system (and `linkage case assessments`) lists them."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    async def list_assessments(self, request: node_api_pb2.CaseRequest) -> node_api_pb2.Assessments:
        """Newest first, closed cases too; the view is audited with the case's people."""
        store = self.ctx.store
        if await store.fetchone("SELECT 1 FROM cases WHERE case_id = ?", (request.case_id,)) is None:
            raise not_found(f"no case {request.case_id!r} at this node")
        people = await store.fetchall("SELECT token FROM case_people WHERE case_id = ?", (request.case_id,))
        tokens = [bytes(t) for (t,) in people]
        state, params = state_of(self.ctx.policy.codes)
        rows = await store.fetchall(
            f"SELECT a.assessment_id, a.summary_id, a.version, a.recorded_at_ms, a.body, a.review_date, {state}, "
            "(SELECT group_concat(share_id) FROM (SELECT share_id FROM shares INDEXED BY shares_by_assessment "
            "WHERE assessment_id = a.assessment_id ORDER BY share_id)) "
            "FROM assessments a INDEXED BY assessments_by_case WHERE a.case_id = ? "
            "ORDER BY a.recorded_at_ms DESC, a.rowid DESC",
            (*params, request.case_id),
        )
        listed = node_api_pb2.Assessments()
        for assessment_id, summary_id, version, recorded_at, body, review_date, now, shares in rows:
            summary = summary_pb2.RiskSummary.FromString(body)
            listed.assessments.add(
                assessment_id=assessment_id,
                summary_id=summary_id,
                version=version,
                recorded_at_ms=recorded_at,
                author=summary.author,
                headline=summary.headline,
                state=now,
                review_date=dates.parse(review_date) if review_date else None,
                share_ids=shares.split(",") if shares else [],
            )
        async with store.tx() as tx:
            await tx.audit(
                "assessments.viewed",
                request.actor,
                tokens=tokens,
                detail={"case_id": request.case_id, "assessments": len(listed.assessments)},
            )
        return listed
