"""A real gateway and real nodes over mTLS on loopback: routing by family link."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from pathlib import Path

import pytest

from linkage import stories
from linkage.auditlog import verify_store
from linkage.clock import SystemClock
from linkage.tokens import MAX_TOKENS_PER_MESSAGE
from linkage.v1 import node_api_pb2, summary_pb2
from node.server import NodeServer
from tests.harness import (
    PRACTITIONER,
    Cluster,
    LocalFederation,
    audit_events,
    make_federation,
    running,
    wait_delivered,
)


async def open_case(
    cluster: Cluster, node: str, people: list[node_api_pb2.PersonIdentifier], case_ref: str = "case-1"
) -> list[bytes]:
    response = await cluster.api(node).OpenCase(
        node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref=case_ref, people=people)
    )
    return [p.link_token for p in response.people]


async def share_think_family(
    cluster: Cluster, headline: str = "", case_ref: str = "case-1"
) -> node_api_pb2.ShareSummaryResponse:
    family = stories.think_family_people()
    parent, child = await open_case(cluster, "amh", family, case_ref)
    await open_case(cluster, "csc", family)
    await open_case(cluster, "school", [family[1]])
    await open_case(
        cluster,
        "police",
        [node_api_pb2.PersonIdentifier(scheme="nhs", value=stories.UNRELATED_NHS, role_in_risk="AT_RISK")],
    )
    amh = cluster.api("amh")
    assessment = stories.parent_risk_change(parent, child)
    if headline:
        assessment.headline = headline
    recorded = await amh.RecordAssessment(
        node_api_pb2.RecordAssessmentRequest(
            actor=PRACTITIONER, case_id=(await _case_id(cluster, "amh")), assessment=assessment
        )
    )
    return await amh.ShareSummary(
        node_api_pb2.ShareSummaryRequest(
            actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
        )
    )


async def summaries(cluster: Cluster, node: str) -> list[node_api_pb2.ReceivedSummary]:
    """The summaries in a node's inbox (not the notices and replies around them)."""
    items = (await cluster.api(node).ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER))).items
    return [i for i in items if i.HasField("summary") and i.summary.summary_id]


async def _case_id(cluster: Cluster, node: str) -> str:
    store = cluster.nodes[node].store
    assert store is not None
    row = await store.fetchone("SELECT case_id FROM cases ORDER BY opened_at_ms LIMIT 1")
    return str(row[0])


async def test_summary_reaches_every_subscribed_node_and_no_other(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        shared = await share_think_family(cluster)
        # The school's agreement needs a stated relevance for the historical alcohol item.
        assert shared.outcome == summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL
        assert sorted(r.node_id for r in shared.recipients) == ["csc", "school"]
        await wait_delivered(cluster.nodes["amh"], 2)

        expected = {
            "csc": [summary_pb2.CURRENCY_CURRENT, summary_pb2.CURRENCY_HISTORICAL],
            "school": [summary_pb2.CURRENCY_CURRENT],
        }
        for node in ("csc", "school"):
            items = await summaries(cluster, node)
            assert len(items) == 1
            item = items[0]
            assert item.sender_node == "amh"
            assert item.sender_agency_type == "NHS_MENTAL_HEALTH"
            assert [r.currency for r in item.summary.risk_items] == expected[node]
            assert item.summary.decision.override_grounds == ["CHILD_AT_RISK"]
            assert "treatment" in item.summary.decision.rationale
        for node in ("police", "amh"):
            assert await summaries(cluster, node) == []


async def _events(node: NodeServer) -> list[str]:
    assert node.store is not None
    return [r[0] for r in await node.store.fetchall("SELECT event FROM audit ORDER BY seq")]


async def test_each_case_opened_subscribes_its_people_and_the_audit_log_says_how_many_were_new(
    federation: LocalFederation,
) -> None:
    """The gateway holds a person's link token for a node once: a second case naming the child
    adds nothing there, and the node asserting every subscription again as it starts adds
    nothing and enters nothing. The audit log names who subscribed which tokens."""
    family = stories.think_family_people()
    async with running(federation, nodes=("amh",)) as cluster:
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "amh", [family[1]], "case-2")
        await cluster.stop_node("amh")
        amh = await cluster.start_node("amh")
        added = await audit_events(amh, "subscription.added")
    assert [(sorted(e["tokens"]), e["detail"], e["actor"]["id"]) for e in added] == [
        (sorted([parent.hex(), child.hex()]), {"added": 2}, PRACTITIONER.id),
        ([child.hex()], {"added": 0}, PRACTITIONER.id),
    ]


async def test_a_federation_in_a_folder_whose_name_sqlite_would_misread_works(tmp_path: Path) -> None:
    """'?', '#' and '%' in the path: the stores' readers (the node's look-ups, the gateway's
    index, `audit verify`) open their files read-only by URI, where those characters mean
    something; escaped, each opens the file named."""
    federation = make_federation(tmp_path / "Linkage #2? (100%)", SystemClock())
    async with running(federation) as cluster:
        await share_think_family(cluster)
        await wait_delivered(cluster.nodes["amh"], 2)
        assert len(await summaries(cluster, "csc")) == 1
    report = verify_store(federation.node_configs["amh"].store_path, [], jobs=1, per_range=8)
    assert report.ok and report.entries > 8, report


async def test_both_ends_audit_the_exchange_and_chains_verify(federation: LocalFederation) -> None:
    from linkage.auditlog import verify_chain

    async with running(federation) as cluster:
        shared = await share_think_family(cluster)
        await wait_delivered(cluster.nodes["amh"], 2)
        sender = await _events(cluster.nodes["amh"])
        queued = await audit_events(cluster.nodes["amh"], "message.queued")
        assert sorted((e["counterpart"], e["message_id"]) for e in queued) == sorted(
            (r.node_id, r.message_id) for r in shared.recipients
        )
        assert all(e["detail"] == {"share_id": shared.share_id, "kind": "summary_share"} for e in queued)
        assert sender.count("message.delivered") == 2
        assert "share.decision" in sender
        assert "message.received" in await _events(cluster.nodes["csc"])
        for node in cluster.nodes.values():
            assert node.store is not None
            rows = await node.store.fetchall("SELECT seq, entry, hash FROM audit ORDER BY seq")
            assert verify_chain(rows).ok


async def test_policy_failure_sends_nothing_and_records_not_shared(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        assessment = stories.parent_risk_change(parent, child)
        assessment.risk_items[1].ClearField("period")  # historical without dates
        amh = cluster.api("amh")
        recorded = await amh.RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=assessment
            )
        )
        decision = stories.override_decision()
        decision.ClearField("override_grounds")  # consent refused, no ground recorded
        shared = await amh.ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=decision
            )
        )
        assert shared.outcome == summary_pb2.DECISION_OUTCOME_NOT_SHARED
        assert {f.code for f in shared.findings} >= {"historical_needs_dates", "override_ground_missing"}
        assert not shared.recipients
        # The decision not to share has a status of its own: recorded, nothing to follow.
        status = await amh.GetShareStatus(node_api_pb2.ShareStatusRequest(actor=PRACTITIONER, share_id=shared.share_id))
        assert (status.outcome, list(status.recipients), status.settled) == (
            summary_pb2.DECISION_OUTCOME_NOT_SHARED,
            [],
            True,
        )
        store = cluster.nodes["amh"].store
        assert store is not None
        assert (await store.fetchone("SELECT COUNT(*) FROM outbox"))[0] == 0
        (decided,) = await audit_events(store, "share.decision")
        assert decided["decision"] == "DECISION_OUTCOME_NOT_SHARED"
        assert "override_ground_missing" in decided["detail"]["findings"]


async def test_api_refuses_bad_requests_with_actionable_errors(federation: LocalFederation) -> None:
    import grpc

    async with running(federation, nodes=("amh",)) as cluster:
        amh = cluster.api("amh")
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        case_id = await _case_id(cluster, "amh")
        beyond = node_api_pb2.WatchReceivedRequest(actor=PRACTITIONER, after_seq=2**63)
        leap = stories.parent_risk_change(parent, child)
        leap.review_date.CopyFrom(stories.date(2026, 2, 29))
        cases: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
            (
                amh.RecordAssessment(
                    node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=case_id, assessment=leap)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "The review date (2026-02-29) is not a date on the calendar",
            ),
            (
                amh.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="c", people=family + family)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "people[2] is the same person as people[0]",
            ),
            *(
                (
                    amh.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref=ref, people=family)),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "case_ref must be your case system's reference, 1-128 characters",
                )
                for ref in ("  ", "x" * 129)
            ),
            *(
                (
                    amh.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="c", people=people)),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a case needs 1-{MAX_TOKENS_PER_MESSAGE} people",
                )
                for people in ([], [family[0]] * (MAX_TOKENS_PER_MESSAGE + 1))
            ),
            (
                amh.OpenCase(node_api_pb2.OpenCaseRequest(actor=PRACTITIONER, case_ref="case-1", people=family)),
                grpc.StatusCode.ALREADY_EXISTS,
                f"case_ref 'case-1' is already open at this node as case {case_id!r}",
            ),
            (
                amh.AddPerson(node_api_pb2.AddPersonRequest(actor=PRACTITIONER, case_id=case_id, person=family[0])),
                grpc.StatusCode.ALREADY_EXISTS,
                "remove them and add them again",
            ),
            (
                amh.RemovePerson(
                    node_api_pb2.RemovePersonRequest(actor=PRACTITIONER, case_id=case_id, link_token=b"x")
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "link_token must be 32 bytes",
            ),
            (
                amh.RemovePerson(
                    node_api_pb2.RemovePersonRequest(actor=PRACTITIONER, case_id=case_id, link_token=bytes(32))
                ),
                grpc.StatusCode.NOT_FOUND,
                f"that person is not in case {case_id!r}",
            ),
            (  # the field is named as the request names it
                amh.AddPerson(
                    node_api_pb2.AddPersonRequest(
                        actor=PRACTITIONER,
                        case_id=case_id,
                        person=node_api_pb2.PersonIdentifier(scheme="nhs", value="9434765918"),
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "person: NHS number fails the modulus-11 check",
            ),
            (
                amh.AddPerson(
                    node_api_pb2.AddPersonRequest(
                        actor=PRACTITIONER,
                        case_id=case_id,
                        person=node_api_pb2.PersonIdentifier(scheme="la-amh", value="a", role_in_risk="NOBODY"),
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "person: role_in_risk 'NOBODY' is not in the code list",
            ),
            (
                amh.GetClosure(node_api_pb2.CaseRequest(actor=summary_pb2.Practitioner(id="x" * 257, role="r"))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "at most 256 characters",
            ),
            (
                amh.ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, after_seq=2**63)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "after_seq 9223372036854775808 is beyond",
            ),
            (amh.WatchReceived(beyond).read(), grpc.StatusCode.INVALID_ARGUMENT, "is beyond"),
            # A resume point this store never reached (one from before its restore, say): resuming
            # there would skip what comes next until the numbers passed it.
            (
                amh.ListReceived(node_api_pb2.ListReceivedRequest(actor=PRACTITIONER, after_seq=1000)),
                grpc.StatusCode.OUT_OF_RANGE,
                "after_seq 1000 is past the last received item this node has numbered (0): it is not a number",
            ),
            (
                amh.WatchReceived(node_api_pb2.WatchReceivedRequest(actor=PRACTITIONER, after_seq=1000)).read(),
                grpc.StatusCode.OUT_OF_RANGE,
                "Resume from 0",
            ),
            (
                amh.WatchDeliveries(node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER, after_seq=10**9)).read(),
                grpc.StatusCode.OUT_OF_RANGE,
                "after_seq 1000000000 is past the last delivery event this node has numbered",
            ),
            (
                amh.WatchDeliveries(
                    node_api_pb2.WatchDeliveriesRequest(actor=PRACTITIONER, after_seq=2**64 - 1)
                ).read(),
                grpc.StatusCode.INVALID_ARGUMENT,
                "is beyond",
            ),
            (
                amh.OpenCase(node_api_pb2.OpenCaseRequest(case_ref="c", people=stories.think_family_people())),
                grpc.StatusCode.INVALID_ARGUMENT,
                "actor.id and actor.role are required",
            ),
            (
                amh.OpenCase(
                    node_api_pb2.OpenCaseRequest(
                        actor=PRACTITIONER,
                        case_ref="c",
                        people=[node_api_pb2.PersonIdentifier(scheme="nhs", value="9434765918")],
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "people[0]: NHS number fails the modulus-11 check",
            ),
            (
                amh.ShareSummary(node_api_pb2.ShareSummaryRequest(actor=PRACTITIONER, assessment_id="nope")),
                grpc.StatusCode.NOT_FOUND,
                "no assessment 'nope'",
            ),
            (
                amh.RecordAssessment(node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id="nope")),
                grpc.StatusCode.NOT_FOUND,
                "open the case first",
            ),
            (
                amh.DiscoverInvolvement(node_api_pb2.CaseRequest(actor=PRACTITIONER, case_id="nope")),
                grpc.StatusCode.NOT_FOUND,
                "no case 'nope' at this node",
            ),
        ]
        for call, code, text in cases:
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == code
                assert text in (exc.details() or "")
            else:
                raise AssertionError(f"expected {code}")


async def test_a_case_holds_as_many_people_as_a_message_can_name(federation: LocalFederation) -> None:
    import grpc

    async with running(federation, nodes=("amh",)) as cluster:
        people = [
            node_api_pb2.PersonIdentifier(scheme="la-amh", value=f"client {n}", role_in_risk="AT_RISK")
            for n in range(MAX_TOKENS_PER_MESSAGE)
        ]
        await open_case(cluster, "amh", people, case_ref="x" * 128)  # as long a reference as it takes
        one_more = node_api_pb2.PersonIdentifier(scheme="la-amh", value="client 64", role_in_risk="AT_RISK")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.api("amh").AddPerson(
                node_api_pb2.AddPersonRequest(
                    actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), person=one_more
                )
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"already has {MAX_TOKENS_PER_MESSAGE} people" in (raised.value.details() or "")


async def test_preview_shows_who_gets_what_and_sends_nothing(federation: LocalFederation) -> None:
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        await open_case(cluster, "school", [family[1]])
        amh = cluster.api("amh")
        recorded = await amh.RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=await _case_id(cluster, "amh"),
                assessment=stories.parent_risk_change(parent, child),
            )
        )
        store = cluster.nodes["amh"].store
        assert store is not None
        audit_before = (await store.fetchone("SELECT COUNT(*) FROM audit"))[0]
        preview = await amh.PreviewShare(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        assert preview.outcome == summary_pb2.DECISION_OUTCOME_SHARED_PARTIAL
        by_node = {r.node_id: r for r in preview.recipients}
        assert "risk_items" in by_node["csc"].fields
        assert "risk_items.narrative" not in by_node["school"].fields
        assert by_node["school"].withheld == ["risk item 2 (SUBSTANCE_MISUSE): relevance to SCHOOL not stated"]
        assert "shared_in_part" in {f.code for f in preview.findings}
        assert (await store.fetchone("SELECT COUNT(*) FROM shares"))[0] == 0
        assert (await store.fetchone("SELECT COUNT(*) FROM outbox"))[0] == 0
        assert (await store.fetchone("SELECT COUNT(*) FROM audit"))[0] == audit_before

        # A basis that holds only in answer to another agency's request is flagged here as the
        # share would flag it: a preview is of a share, not of an answer to a request.
        decision = stories.override_decision()
        decision.lawful_basis.art6.append("A6_1_EA_PUBLIC_TASK_REQUEST")
        preview = await amh.PreviewShare(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=decision
            )
        )
        assert "public_task_request_unanswered" in {f.code for f in preview.findings}


def test_enrolment_refuses_an_agency_type_not_in_the_code_list(tmp_path: Path) -> None:
    from linkage.federation import FederationError, enrol_node, init_federation

    fed = init_federation(tmp_path / "fed", "x.example", SystemClock().now_ms())
    with pytest.raises(FederationError, match="not in the agency_type code list"):
        enrol_node(fed, "n1", "Name", "CHARITY", tmp_path / "n1", "127.0.0.1:1", SystemClock().now_ms())


def test_enrolment_never_writes_over_another_member_and_takes_only_what_it_can_publish(tmp_path: Path) -> None:
    """A node enrolled with --out pointing at another node's folder replaced that node's
    message keys and configuration (its private keys gone for good); an empty agency name,
    a name of two lines (which broke the node.toml it is written into) or a gateway address
    that is not host:port went into the bundle; and a directory published for 0 days was
    expired as it was written, so every node would refuse it. Each is refused, naming it,
    before anything is written."""
    from linkage.federation import FederationError, enrol_gateway, enrol_node, init_federation, publish_directory

    now = SystemClock().now_ms()
    fed = init_federation(tmp_path / "fed", "x.example", now)
    first = enrol_node(fed, "n1", "Oak Primary School", "SCHOOL", tmp_path / "n1", "127.0.0.1:1", now)
    keys = sorted((p.name, p.read_bytes()) for p in (tmp_path / "n1" / "keys").iterdir())
    n2, gw = tmp_path / "n2", "gw.example:7443"
    refusals: list[tuple[str, Path, str, str]] = [  # agency name, out, gateway address; what is said
        ("County Police", tmp_path / "n1", gw, "already holds files"),
        (" ", n2, gw, "agency name is needed"),
        ("County Police\n[gateway]", n2, gw, "one line of at most 200 printable characters"),
        ("County Police", n2, "gateway", "must be host:port"),
    ]
    for name, out, address, said in refusals:
        with pytest.raises(FederationError, match=said):
            enrol_node(fed, "n2", name, "POLICE", out, address, now)
        assert not n2.exists() and not (fed.entries / "n2.pb").exists()
    with pytest.raises(FederationError, match="must be the gateway's id"):
        enrol_node(fed, "n2", "County Police", "POLICE", n2, gw, now, gateway_name='gw"\n[tls]')
    assert first.read_text().startswith('# Linkage node "n1"')
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "n1" / "keys").iterdir()) == keys
    with pytest.raises(FederationError, match="already holds files"):
        enrol_gateway(fed, "gateway", tmp_path / "n1", "0.0.0.0:7443", now)
    with pytest.raises(FederationError, match="valid for 1 to 365 days"):
        publish_directory(fed, now, 0)
    assert not fed.directory_path.exists()


def test_the_federation_commands_refuse_what_an_operator_got_wrong_naming_it(tmp_path: Path) -> None:
    """Each refusal names what is wrong and how to put it right, and writes nothing."""
    from linkage.federation import (
        Federation,
        FederationError,
        enrol_gateway,
        enrol_node,
        init_federation,
        revoke_node,
        rotate_keys,
    )

    now = SystemClock().now_ms()
    with pytest.raises(FederationError, match=r"is not a federation folder \(run 'linkage federation init'\)"):
        Federation.open(tmp_path)
    with pytest.raises(FederationError, match=r"suite must be one of \["):
        init_federation(tmp_path / "fed", "x.example", now, suite="rot13")
    assert not (tmp_path / "fed").exists()
    fed = init_federation(tmp_path / "fed", "x.example", now)
    with pytest.raises(FederationError, match="already holds a federation"):
        init_federation(tmp_path / "fed", "y.example", now)
    assert Federation.open(tmp_path / "fed").federation_id == "x.example"
    enrol_node(fed, "n1", "Oak Primary School", "SCHOOL", tmp_path / "n1", "127.0.0.1:1", now)
    for call, said in (
        (lambda: enrol_node(fed, "N1", "Police", "POLICE", tmp_path / "n2", "127.0.0.1:1", now), "node id must be"),
        (lambda: enrol_node(fed, "n1", "Police", "POLICE", tmp_path / "n2", "127.0.0.1:1", now), "already enrolled"),
        (lambda: enrol_gateway(fed, "Gate way", tmp_path / "gw", "0.0.0.0:7443", now), "a lowercase slug"),
        (lambda: enrol_gateway(fed, "gateway", tmp_path / "gw", "7443", now), "must be host:port, e.g. 0.0.0.0:7443"),
        (lambda: rotate_keys(fed, "n2", tmp_path / "n2", now), "node 'n2' is not enrolled"),
        (lambda: revoke_node(fed, "n2"), "node 'n2' is not enrolled"),
    ):
        with pytest.raises(FederationError, match=said):
            call()
    assert not (tmp_path / "n2").exists() and not (tmp_path / "gw").exists()
    assert sorted(p.name for p in fed.entries.iterdir()) == ["n1.pb"]


def test_an_enrolled_gateway_has_a_witness_key_the_directory_names(tmp_path: Path) -> None:
    """Kept readable by its owner only, and configured; re-enrolling issues a new one."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from linkage.config import GatewayConfig
    from linkage.federation import enrol_gateway, init_federation, publish_directory
    from linkage.keys import load_ed25519, raw_public
    from linkage.v1 import directory_pb2

    now = SystemClock().now_ms()
    fed = init_federation(tmp_path / "fed", "x.example", now)
    keys = []
    for _ in range(2):
        config = GatewayConfig.load(enrol_gateway(fed, "gateway", tmp_path / "gw", "127.0.0.1:1", now))
        assert config.witness_key is not None and config.witness_key.stat().st_mode & 0o777 == 0o600
        key = load_ed25519(config.witness_key)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        publish_directory(fed, now, 7, copy_to=(tmp_path / "gw",))
        signed = directory_pb2.SignedDirectory.FromString((tmp_path / "gw" / "directory.pb").read_bytes())
        (entry,) = directory_pb2.Directory.FromString(signed.directory).gateways
        assert entry.witness_public_key == raw_public(key)
        keys.append(entry.witness_public_key)
    assert keys[0] != keys[1]


def test_an_enrolment_cut_short_at_any_point_enrols_a_whole_bundle_or_nothing(tmp_path: Path) -> None:
    """The node's directory entry was written before its configuration, and each key file in
    place then chmod-ed: a crash between them enrolled a node with no node.toml, whose keys
    were readable by others. Cut at each of its file-system steps in turn, an enrolment now
    leaves either no entry (the directory does not name the node) or an entry whose bundle
    loads whole, with keys that match it and are its owner's alone."""
    from linkage.config import NodeConfig
    from linkage.federation import enrol_node, init_federation, publish_directory
    from linkage.keys import MessageKeys, raw_public
    from linkage.v1 import directory_pb2
    from tests.file_crashes import Crash, crash_at, readable_by_others

    now = SystemClock().now_ms()
    fed = init_federation(tmp_path / "fed", "x.example", now)
    enrolled = []
    for step in itertools.count(1):
        node_id, out = f"n{step}", tmp_path / f"n{step}"
        try:
            with crash_at(step):
                enrol_node(fed, node_id, "County Police", "POLICE", out, "gw.example:7443", now)
        except Crash:
            pass
        else:
            break
        assert not readable_by_others(out / "keys")
        if (fed.entries / f"{node_id}.pb").exists():
            entry = directory_pb2.NodeEntry.FromString((fed.entries / f"{node_id}.pb").read_bytes())
            keys = MessageKeys.load(NodeConfig.load(out / "node.toml").message_keys)
            assert raw_public(keys.signing) == entry.keys[0].signing_public_key
            enrolled.append(node_id)
    assert step > 30 and enrolled == [f"n{step - 1}"]  # only a crash after its last step leaves it enrolled
    directory = publish_directory(fed, now, 7)
    assert sorted(n.node_id for n in directory.nodes) == sorted([*enrolled, f"n{step}"])
