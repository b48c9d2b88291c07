"""A SIGHUP takes the node's policy files (its data-sharing agreement, glossary and code-list
extensions) as they now are, without a restart: recorded first, with the versions it
replaces, and named by every share decided after. An edit that does not load, or that
changes the identity-basis codes, is refused, saying why, and the policy in use stands."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from linkage.clock import SystemClock
from linkage.config import PolicyFiles
from linkage.v1 import summary_pb2
from node.server import NodeServer
from tests.harness import CapturedLogs, Cluster, audit_events, make_federation, running, store_refuses
from tests.test_delivery import family_assessment, share

PACKAGED = resources.files("linkage.data").joinpath("dsa.toml").read_text()
CODES_VERSION = 'version = "2026.12.7"'  # the packaged code lists'


def agreement(version: str) -> str:
    return PACKAGED.replace('version = "example-2026.11"', f'version = "{version}"')


def local_codes(version: str, extra: str = "") -> str:
    return f'version = "{version}"\n[[challenge_subject]]\ncode = "LOCAL_PANEL"\nlabel = "Local panel"\n{extra}'


async def decided(cluster: Cluster, assessment_id: str) -> summary_pb2.ShareDecision:
    shared = await share(cluster, assessment_id)
    assert len(shared.recipients) == 1
    return shared.decision


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
        assert (first.agreement_version, first.codelists_version.split("+")[-1]) == ("review-1", "local-1")

        await amh.hung_up()  # nothing edited: nothing recorded
        assert [r["agreement"] for r in captured_logs.records("policy.unchanged")] == ["review-1"]

        dsa.write_text("version = [")  # saved half-way through an edit
        await amh.hung_up()
        local.write_text(local_codes("local-2", '[[identity_basis]]\ncode = "LOCAL_INDEX"\nlabel = "Local index"\n'))
        dsa.write_text(agreement("review-2"))
        await amh.hung_up()
        torn, bases = (r["problem"] for r in captured_logs.records("policy.reload_refused"))
        assert torn.startswith("cannot load the policy from "), torn
        assert torn.endswith(": dsa.toml: Invalid value (at end of document)"), torn
        assert "identity-basis codes differ" in bases and "restart the node" in bases
        assert (await decided(cluster, assessment_id)).agreement_version == "review-1"

        local.write_text(local_codes("local-2"))
        with store_refuses(amh, "INSERT", "audit", "NEW.event = 'policy.loaded'"):  # recorded first, or not taken
            await amh.hung_up()
        assert len(captured_logs.records("policy.reload_failed")) == 1
        assert (await decided(cluster, assessment_id)).agreement_version == "review-1"

        await amh.hung_up()
        later = await decided(cluster, assessment_id)
        assert (later.agreement_version, later.codelists_version.split("+")[-1]) == ("review-2", "local-2")
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
