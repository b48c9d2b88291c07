"""Finding this node's cases again: by id, by the case system's reference, or by a person's
identifier; or every case, a page at a time. A practitioner without a case system, or one
that lost an id, would otherwise have no way back to a case or to its people's tokens."""

from __future__ import annotations

from typing import Any

from linkage.v1 import node_api_pb2
from node.cases import Cases
from node.errors import invalid

DEFAULT_LIMIT = 50
MOST = 500
COLUMNS = "c.case_id, c.case_ref, c.opened_at_ms, c.status"


async def find_cases(cases: Cases, request: node_api_pb2.FindCasesRequest) -> node_api_pb2.CaseList:
    if request.limit > MOST:
        raise invalid(f"limit is at most {MOST}: ask for the next page with before_case_id")
    keys = [bool(request.case_id), bool(request.case_ref), request.HasField("person")]
    if sum(keys) > 1:
        raise invalid("find by one of case_id, case_ref and person, or by none to list every case")
    limit = request.limit or DEFAULT_LIMIT
    where: list[str] = ["c.case_id < ?"]
    values: list[str | bytes] = [request.before_case_id or "\uffff"]  # ids ascend as cases are opened
    tokens: list[bytes] = []
    source = "cases c"
    if request.case_id:
        where.append("c.case_id = ?")
        values.append(request.case_id)
    elif request.case_ref:
        where.append("c.case_ref = ?")
        values.append(request.case_ref)
    elif request.HasField("person"):
        token = cases.person_token(request.person)
        source = "case_people p JOIN cases c USING (case_id)"
        where.append("p.token = ?")
        values.append(token)
        tokens = [token]
    if not request.include_closed:
        where.append("c.status = 'open'")
    rows: list[Any] = await cases.ctx.store.fetchall(
        f"SELECT {COLUMNS} FROM {source} WHERE {' AND '.join(where)} ORDER BY c.case_id DESC LIMIT ?",
        (*values, limit + 1),
    )
    found = node_api_pb2.CaseList(
        cases=[
            node_api_pb2.FoundCase(
                case_id=case_id,
                case_ref=case_ref,
                opened_at_ms=opened_at_ms,
                status=status,
                people=await cases.people(case_id),
            )
            for case_id, case_ref, opened_at_ms, status in rows[:limit]
        ],
        next_before=rows[limit - 1][0] if len(rows) > limit else "",
    )
    if request.case_id or request.case_ref:  # one case (or a few), whose people it shows
        tokens = [p.link_token for c in found.cases for p in c.people]
    by = ["case_id", "case_ref", "person"][keys.index(True)] if any(keys) else "all"
    async with cases.ctx.store.tx() as tx:  # it shows people: who looked, and for whom, is on the record
        await tx.audit("cases.found", request.actor, tokens=tokens, detail={"by": by, "found": len(found.cases)})
    return found
