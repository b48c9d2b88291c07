"""Finding a node's cases again, through a real node: by id, by the case system's
reference, by a person's identifier, or every case a page at a time; closed ones on
request; each look-up audited; from the API and the CLI."""

from __future__ import annotations

import grpc
import pytest

from linkage import stories
from linkage.v1 import node_api_pb2
from tests.harness import LocalFederation, audit_events, linkage, running
from tests.test_workflows import CSC_WORKER, events, planned_closure

CHILD = node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.CHILD_NHS)
OTHER = node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")


def find(**fields: object) -> node_api_pb2.FindCasesRequest:
    return node_api_pb2.FindCasesRequest(actor=CSC_WORKER, **fields)  # type: ignore[arg-type]


async def test_cases_are_found_by_id_reference_person_or_a_page_at_a_time(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        api = cluster.api("csc")
        family = stories.think_family_people()
        opened = [
            await api.OpenCase(node_api_pb2.OpenCaseRequest(actor=CSC_WORKER, case_ref=f"CSC-{n}", people=people))
            for n, people in enumerate([family, [family[1]], [OTHER]])
        ]
        ids = [o.case_id for o in opened]

        page = await api.FindCases(find(limit=2))  # newest first
        assert [c.case_id for c in page.cases] == [ids[2], ids[1]] and page.next_before == ids[1]
        rest = await api.FindCases(find(limit=2, before_case_id=page.next_before))
        assert [c.case_id for c in rest.cases] == [ids[0]] and not rest.next_before
        whole = await api.FindCases(find(limit=3))  # exactly a page: no next one
        assert [c.case_id for c in whole.cases] == ids[::-1] and not whole.next_before
        assert len((await api.FindCases(find(limit=500))).cases) == 3  # the most a page holds

        (by_ref,) = (await api.FindCases(find(case_ref="CSC-1"))).cases
        assert (by_ref.case_id, by_ref.status, list(by_ref.people)) == (ids[1], "open", list(opened[1].people))
        assert [c.case_id for c in (await api.FindCases(find(person=CHILD))).cases] == [ids[1], ids[0]]
        (by_id,) = (await api.FindCases(find(case_id=ids[0]))).cases
        assert by_id.case_ref == "CSC-0" and len(by_id.people) == 2

        assert not (await api.ProposeClosure(planned_closure(CSC_WORKER, ids[2]))).awaiting  # nobody else linked
        await api.CloseCase(node_api_pb2.CloseCaseRequest(actor=CSC_WORKER, case_id=ids[2]))
        assert [c.case_id for c in (await api.FindCases(find())).cases] == [ids[1], ids[0]]
        closed = (await api.FindCases(find(include_closed=True))).cases[0]
        assert (closed.case_id, closed.status) == (ids[2], "closed")
        assert not (await api.FindCases(find(case_ref="CSC-2"))).cases  # closed: asked for open ones only

        found = events(await audit_events(cluster.nodes["csc"]), "cases.found")
        assert [e["detail"] for e in found[4:6]] == [{"by": "case_ref", "found": 1}, {"by": "person", "found": 2}]
        assert found[4]["tokens"] == [p.link_token.hex() for p in opened[1].people]  # whose case was shown
        assert found[5]["tokens"] == [opened[1].people[0].link_token.hex()]  # who looked for the child

        refusals: list[tuple[dict[str, object], str]] = [
            ({"case_ref": "CSC-1", "person": CHILD}, "one of case_id, case_ref and person"),
            ({"limit": 501}, "limit is at most 500"),
            ({"person": node_api_pb2.PersonIdentifier(scheme="nhs", value="123")}, "person: "),
        ]
        for fields, said in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.FindCases(find(**fields))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert said in (refused.value.details() or ""), refused.value

        who = ("--socket", str(cluster.nodes["csc"].config.api_socket), "--actor-id", "csc-1", "--actor-role", "SW")
        code, out, err = await linkage("case", "list", "--person", f"nhs:{stories.CHILD_NHS}", *who)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(f"Case {ids[1]}  CSC-1  opened ") and lines[0].endswith(" open"), out
        assert lines[1].startswith(f"  {opened[1].people[0].link_token.hex()}  child AT_RISK CHILD"), out
        code, out, err = await linkage("case", "show", ids[2], *who)
        assert code == 0 and out.splitlines()[0].endswith(" closed"), (out, err)
        assert out.splitlines()[-1] == f"  Its assessments: linkage case assessments {ids[2]}", out
        unknown = "01a24516-33ec-7c98-a875-092217b49ffe"
        code, out, err = await linkage("case", "show", unknown, *who)  # a script must hear it is not here
        assert (code, out) == (1, "") and f"no case {unknown!r} at this node" in err, err
        code, out, err = await linkage("case", "list", "--limit", "1", *who)
        assert out.splitlines()[-1] == f"More: linkage case list --before {ids[1]} ...", out
