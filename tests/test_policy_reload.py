"""A SIGHUP takes the node's policy files (its data-sharing agreement, glossary and code-list
extensions) as they now are, without a restart: recorded first, with the versions it
replaces, and named by every share decided after. An edit that does not load, or that
changes the identity-basis codes, is refused, saying why, and the policy in use stands."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

import grpc
import pytest

from linkage.clock import SystemClock
from linkage.config import PolicyFiles
from linkage.v1 import node_api_pb2, summary_pb2
from node import server
from node.server import NodeServer
from node.store import Store
from tests.harness import (
    PRACTITIONER,
    CapturedLogs,
    Cluster,
    LocalFederation,
    audit_events,
    make_federation,
    running,
    store_refuses,
)
from tests.test_delivery import family_assessment, share
from tests.test_federation import _case_id

PACKAGED = resources.files("linkage.data").joinpath("dsa.toml").read_text()
PANEL = '[[challenge_subject]]\ncode = "LOCAL_PANEL"\nlabel = "Referral to the local escalation panel"\n'


def agreement(version: str) -> str:
    """The packaged example agreement, under another version."""
    edited, count = re.subn(r'^version = ".*"$', f'version = "{version}"', PACKAGED, count=1, flags=re.MULTILINE)
    assert count == 1
    return edited


def local_codes(version: str, *extra: str) -> str:
    return f'version = "{version}"\n' + "".join(extra)


async def decided(cluster: Cluster, assessment_id: str) -> summary_pb2.ShareDecision:
    shared = await share(cluster, assessment_id)
    assert len(shared.recipients) == 1
    return shared.decision


async def panel_challenge(cluster: Cluster) -> node_api_pb2.MessageSent:
    """amh challenges csc under a subject of the federation's own code list."""
    case_id = await _case_id(cluster, "amh")
    return await cluster.api("amh").RaiseChallenge(
        node_api_pb2.RaiseChallengeRequest(
            actor=PRACTITIONER,
            case_id=case_id,
            to_node="csc",
            stage="PRACTITIONER",
            subject="LOCAL_PANEL",
            concern="We think the risk to the child is higher than your assessment says.",
            outcome_sought="Take it to the local escalation panel.",
        )
    )


async def test_a_sighup_takes_an_edited_agreement_and_code_lists_recorded_first_or_says_why_not(
    tmp_path: Path, captured_logs: CapturedLogs
) -> None:
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh", "csc"))
    config = federation.node_configs["amh"]
    dsa, local = config.data_dir / "dsa.toml", config.data_dir / "local.toml"
    dsa.write_text(agreement("review-1"))
    local.write_text(local_codes("local-1"))
    federation.node_configs["amh"] = dataclasses.replace(
        config, policy=PolicyFiles(agreement=dsa, codelists_extra=(local,))
    )
    async with running(federation) as cluster:
        amh: NodeServer = cluster.nodes["amh"]
        assessment_id = await family_assessment(cluster)
        first = await decided(cluster, assessment_id)
        with pytest.raises(grpc.aio.AioRpcError, match="'LOCAL_PANEL' is not a challenge_subject code"):
            await panel_challenge(cluster)
        assert (first.agreement_version, first.codelists_version.split("+")[-1]) == ("review-1", "local-1")

        await amh.hung_up()  # nothing edited: nothing recorded
        assert [r["agreement"] for r in captured_logs.records("policy.unchanged")] == ["review-1"]

        dsa.write_text("version = [")  # saved half-way through an edit
        await amh.hung_up()
        basis = '[[identity_basis]]\ncode = "LOCAL_INDEX"\nlabel = "Local index"\n'
        local.write_text(local_codes("local-2", PANEL, basis))
        dsa.write_text(agreement("review-2"))
        await amh.hung_up()
        torn, bases = (r["problem"] for r in captured_logs.records("policy.reload_refused"))
        assert torn.startswith("cannot load the policy from "), torn
        assert torn.endswith(": dsa.toml: Invalid value (at end of document)"), torn
        assert "identity-basis codes differ" in bases and "restart the node" in bases
        assert (await decided(cluster, assessment_id)).agreement_version == "review-1"

        local.write_text(local_codes("local-2", PANEL))
        with store_refuses(amh, "INSERT", "audit", "NEW.event = 'policy.loaded'"):  # recorded first, or not taken
            await amh.hung_up()
        assert len(captured_logs.records("policy.reload_failed")) == 1
        assert (await decided(cluster, assessment_id)).agreement_version == "review-1"

        await amh.hung_up()
        later = await decided(cluster, assessment_id)
        assert (later.agreement_version, later.codelists_version.split("+")[-1]) == ("review-2", "local-2")
        sent = await panel_challenge(cluster)  # the new code list's subject is known
        assert [r.node_id for r in sent.recipients] == ["csc"]
        (loaded,) = await audit_events(amh, "policy.loaded")
        codes = first.codelists_version.split("+")[0]
        assert loaded["detail"] == {
            "agreement": "review-2",
            "codelists": f"{codes}+local-2",
            "previous_agreement": "review-1",
            "previous_codelists": f"{codes}+local-1",
        }
        decisions = [e["detail"]["agreement"] for e in await audit_events(amh, "share.decision")]
        assert decisions == ["review-1"] * 3 + ["review-2"]
        assert [r["agreement"] for r in captured_logs.records("policy.loaded")] == ["review-2"]


async def test_linkage_node_serve_takes_the_policy_at_a_hangup(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`linkage node serve` hands the runtime a SIGHUP callback that takes the policy too, not
    only the files the periodic look reads. The runtime's own handling of signals is
    tests/test_runtime.py's; here it is played by a stand-in that hangs up once, then stops."""
    config = federation.node_configs["amh"]
    dsa = config.data_dir / "dsa.toml"
    dsa.write_text(agreement("review-1"))
    config = dataclasses.replace(config, policy=PolicyFiles(agreement=dsa))

    async def hang_up_once(
        banner: str, stop: Callable[[], Awaitable[None]], on_hangup: Callable[[], Awaitable[None]] | None
    ) -> None:
        assert on_hangup is not None
        dsa.write_text(agreement("review-2"))
        await on_hangup()
        await stop()

    monkeypatch.setattr(server, "serve_until_signalled", hang_up_once)
    async with running(federation, nodes=()) as cluster:
        await server.serve(dataclasses.replace(config, gateway_address=f"127.0.0.1:{cluster.gateway.port}"))
    store = await Store.open(config.store_path, SystemClock())
    try:
        (loaded,) = await audit_events(store, "policy.loaded")
    finally:
        await store.close()
    assert (loaded["detail"]["previous_agreement"], loaded["detail"]["agreement"]) == ("review-1", "review-2")
