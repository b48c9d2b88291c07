"""How an agency knows a person's identifier is theirs (mission anchors §8 item 11): recorded
when the person joins a case, carried in every summary about them, and told to recipients
when it was not verified, so that a wrong link is checked before anyone acts on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from linkage import stories
from linkage.config import PolicyFiles
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    LocalFederation,
    linkage,
    next_item,
    running,
    wait_delivered,
)
from tests.policy_fixtures import codes, request, run
from tests.test_federation import _case_id, open_case


def test_a_person_linked_without_verification_is_a_warning_to_the_sender() -> None:
    findings = {}
    for basis, protected in [
        ("VERIFIED_NATIONAL", False),
        ("VERIFIED_DOCUMENT", False),
        ("STATED", False),
        ("DEMOGRAPHIC_MATCH", False),
        ("DEMOGRAPHIC_MATCH", True),  # never sent, so nobody is told
        ("", False),  # linked before it was recorded
    ]:
        req = request()
        req.assessment.people[0].identity_basis = basis
        req.assessment.people[0].protect_identity = protected
        findings[basis, protected] = run(req).findings
    warned = {key for key, found in findings.items() if any(f.code == "identity_not_verified" for f in found)}
    assert warned == {("STATED", False), ("DEMOGRAPHIC_MATCH", False)}
    (warning,) = [f for f in findings["DEMOGRAPHIC_MATCH", False] if f.code == "identity_not_verified"]
    assert warning.severity == "warning"
    assert warning.message.startswith("parent was linked by DEMOGRAPHIC_MATCH (found by matching name, date of birth")
    unknown = request()
    unknown.assessment.people[0].identity_basis = "GUESSED"
    assert "unknown_code" in codes(run(unknown))


async def test_the_case_records_how_each_person_was_linked_and_recipients_are_told(
    federation: LocalFederation,
) -> None:
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        family[0].identity_basis = "DEMOGRAPHIC_MATCH"  # amh matched the parent on name and date of birth
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            bad = node_api_pb2.PersonIdentifier()
            bad.CopyFrom(family[1])
            bad.identity_basis = "VERIFIED"
            await open_case(cluster, "amh", [bad])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "people[0]: identity_basis 'VERIFIED' is not in the code list; use one of DEMOGRAPHIC_MATCH" in (
            raised.value.details() or ""
        )
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", stories.think_family_people())
        case = await _case_id(cluster, "amh")
        found = await cluster.api("amh").FindCases(node_api_pb2.FindCasesRequest(actor=PRACTITIONER, case_id=case))
        assert {p.link_token: p.identity_basis for p in found.cases[0].people} == {
            parent: "DEMOGRAPHIC_MATCH",
            child: "VERIFIED_NATIONAL",
        }

        assessment = stories.parent_risk_change(parent, child)
        for person in assessment.people:  # the case system's word does not replace the case's record
            person.identity_basis = "VERIFIED_NATIONAL"
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case, assessment=assessment)
        )
        shared = await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        assert [f.code for f in shared.findings if f.code == "identity_not_verified"] == ["identity_not_verified"]
        await wait_delivered(cluster.nodes["amh"], 1)
        item = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert {p.relationship: p.identity_basis for p in item.summary.people} == {
            "parent": "DEMOGRAPHIC_MATCH",
            "child": "VERIFIED_NATIONAL",
        }

        socket = str(cluster.nodes["csc"].config.api_socket)
        code, out, err = await linkage(
            "inbox", "open", item.message_id, "--actor-id", "csc-1", "--actor-role", "Social worker", "--socket", socket
        )
        assert code == 0, err
        assert "  Check identity: the sender linked the parent by DEMOGRAPHIC_MATCH; confirm it is the same" in out
        assert "linked the child" not in out
        # A chronology is read apart from the summary: its entries say so too.
        csc_case = await _case_id(cluster, "csc")
        timeline = await cluster.api("csc").Chronology(
            node_api_pb2.ChronologyRequest(actor=PRACTITIONER, case_id=csc_case)
        )
        assert [list(e.unverified_link_tokens) for e in timeline.entries] == [[parent], [parent]]
        code, out, err = await linkage(
            "chronology", csc_case, "--actor-id", "csc-1", "--actor-role", "Social worker", "--socket", socket
        )
        assert code == 0, err
        assert out.count("  Check identity: 1 of the people in it linked on a basis not verified; confirm") == 2

        socket = str(cluster.nodes["amh"].config.api_socket)
        code, out, err = await linkage(
            "case", "show", case, "--actor-id", "amh-1", "--actor-role", "Care coordinator", "--socket", socket
        )
        assert code == 0, err
        assert f"  {parent.hex()}  parent POSES_RISK ADULT_OTHER, linked by DEMOGRAPHIC_MATCH\n" in out


async def test_a_chronology_marks_a_basis_the_code_lists_come_to_know_once_the_node_restarts_on_them(
    federation: LocalFederation, tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    """A federation adds an identity basis of its own (`LOCAL_INDEX`: matched in a local
    index, not confirmed). amh, on the new lists, links a parent by it and shares; csc,
    not yet on them, does not know the basis, so its chronology cannot mark the parent.
    Restarted on the new lists, csc derives its stored entries again, and they do; restarted
    on them again it derives nothing, and put back on its first lists it derives them again."""
    extension = tmp_path / "local-codes.toml"
    extension.write_text(
        'version = "local-1"\n[[identity_basis]]\ncode = "LOCAL_INDEX"\n'
        'label = "Matched in the local authority\'s own index, and not confirmed"\n'
    )
    on_the_new_lists = {
        node: dataclasses.replace(config, policy=PolicyFiles(codelists_extra=(extension,)))
        for node, config in federation.node_configs.items()
    }
    federation.node_configs["amh"] = on_the_new_lists["amh"]
    first = federation.node_configs["csc"]
    async with running(federation, nodes=("amh", "csc")) as cluster:
        family = stories.think_family_people()
        family[0].identity_basis = "LOCAL_INDEX"
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", stories.think_family_people())
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=await _case_id(cluster, "amh"),
                assessment=stories.parent_risk_change(parent, child),
            )
        )
        await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        await wait_delivered(cluster.nodes["amh"], 1)
        csc_case = await _case_id(cluster, "csc")
        request = node_api_pb2.ChronologyRequest(actor=PRACTITIONER, case_id=csc_case)
        before = await cluster.api("csc").Chronology(request)
        assert [list(e.unverified_link_tokens) for e in before.entries] == [[], []]

        await cluster.stop_node("csc")
        federation.node_configs["csc"] = on_the_new_lists["csc"]
        await cluster.start_node("csc")
        after = await cluster.api("csc").Chronology(request)
        assert [list(e.unverified_link_tokens) for e in after.entries] == [[parent], [parent]]
        await cluster.stop_node("csc")  # restarted on the same lists: nothing to derive again
        await cluster.start_node("csc")
        assert len(captured_logs.records("chronology.derived_again")) == 1
        await cluster.stop_node("csc")  # and back on the lists it had first: derived again
        federation.node_configs["csc"] = first
        await cluster.start_node("csc")
        back = await cluster.api("csc").Chronology(request)
        assert [list(e.unverified_link_tokens) for e in back.entries] == [[], []]
    # A store new to them has none to drop; each change drops the summary's row and its two risk items' entries.
    assert [e["rows"] for e in captured_logs.records("chronology.derived_again")] == [3, 3]
