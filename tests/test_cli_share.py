"""`linkage share ...` against a running node: the CLI a practitioner or agency IT uses."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sys
from contextlib import closing
from pathlib import Path

from google.protobuf import json_format

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2
from tests.harness import (
    PRACTITIONER,
    LocalFederation,
    audit_verify_from_gateway,
    linkage,
    next_item,
    revoke,
    running,
    wait_delivered,
)
from tests.test_federation import _case_id, open_case
from tests.test_workflows import share, think_family


async def test_preview_then_send_then_status_from_the_cli(federation: LocalFederation, tmp_path: Path) -> None:
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "school", [family[1]])
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=await _case_id(cluster, "amh"),
                assessment=stories.parent_risk_change(parent, child),
            )
        )
        decision = tmp_path / "decision.json"
        decision.write_text(json_format.MessageToJson(stories.override_decision()))
        socket = str(cluster.nodes["amh"].config.api_socket)
        who = ["--actor-id", "amh-114", "--actor-role", "Care coordinator", "--socket", socket]
        common = ["--assessment", recorded.assessment_id, "--decision", str(decision), *who]

        code, out, err = await linkage("share", "preview", *common)
        assert code == 0, err
        assert "If you share now: SHARED_PARTIAL (nothing has been sent)" in out
        assert "withheld: risk item 2 (SUBSTANCE_MISUSE): relevance to SCHOOL not stated" in out
        code, out, err = await linkage("share", "preview", *common, "--json")
        assert code == 0, err
        previewed = json.loads(out)  # as a case system's script reads it
        assert previewed["outcome"] == "DECISION_OUTCOME_SHARED_PARTIAL"
        assert [r["node_id"] for r in previewed["recipients"]] == ["school"]

        code, out, err = await linkage("share", "send", *common, "--request-id", "cli-1", "--json")
        assert code == 0, err
        sent = json.loads(out)
        code, out, err = await linkage("share", "send", *common, "--request-id", "cli-1", "--json")
        assert code == 0 and json.loads(out) == sent, err  # sent again: the same answer, nothing more shared
        assert sent["outcome"] == "DECISION_OUTCOME_SHARED_PARTIAL"
        await wait_delivered(cluster.nodes["amh"], 1)

        code, out, err = await linkage("share", "status", sent["share_id"], *who)
        assert code == 0, err
        receipt = r"school: delivered after 1 attempt\(s\), receipt at \d{4}-\d\d-\d\d \d\d:\d\d UTC\n"
        assert re.search(receipt, out), out  # a time a person reads, not milliseconds since 1970

        # The school leaves the federation: the withdrawal says it could not be told, and why.
        await revoke(cluster, "school")
        store = cluster.nodes["amh"].store
        assert store is not None
        (summary_id,) = await store.fetchone("SELECT summary_id FROM outbox")
        withdraw = (
            "share", "withdraw", summary_id, "--reason", "Sent in error", "--ground", "SHARED_IN_ERROR",
            "--only", "school", "--request-id", "w", *who,
        )  # fmt: skip
        code, out, err = await linkage(*withdraw)
        assert code == 0, err
        assert await linkage(*withdraw) == (0, out, "")  # repeated with its request id: answered, not refused
        assert "school: undeliverable (message " in out and "'school' is revoked; if this agency must" in out
        assert "warning: sharing it was a personal data breach: tell your information governance officer" in out
        withdrawal_id = out.split()[1].rstrip(":")  # "Withdrawal ID:"
        code, out, err = await linkage("share", "status", withdrawal_id, *who)
        assert code == 0, err
        assert f"Withdrawal {withdrawal_id} (SHARED_IN_ERROR; each recipient erases it: delivered means" in out
        code, as_json, err = await linkage("share", "status", withdrawal_id, *who, "--json")
        assert code == 0, err
        (undelivered,) = json.loads(as_json)["recipients"]
        assert undelivered["state"] == "undeliverable"
        message_id = undelivered["message_id"]
        assert f"linkage share follow-up {message_id} --note ..." in out  # what to do, said with the status

        # Told another way, and recorded so: the status says when and how.
        note = "Telephoned the school's designated safeguarding lead."
        follow_up = ("share", "follow-up", message_id, "--note", note, "--request-id", "f", *who)
        code, out, err = await linkage(*follow_up)
        assert code == 0, err
        assert out.startswith(f"Followed up: school, message {message_id} (")
        code, again, err = await linkage(*follow_up, "--json")  # repeated with its request id: the same answer
        assert code == 0, err
        assert json.loads(again)["follow_up"] == note
        code, out, err = await linkage("share", "status", withdrawal_id, *who)
        assert code == 0, err
        assert re.search(rf"    followed up \d{{4}}-\d\d-\d\d \d\d:\d\d UTC: {re.escape(note)}\n", out), out
        assert "linkage share follow-up" not in out
        code, out, err = await linkage("share", "queues", *who, "--json")
        assert code == 0, err
        assert json.loads(out) == {"connected": True}  # nothing waits; false and empty are left out

        anonymous = ["--assessment", recorded.assessment_id, "--decision", str(decision), "--socket", socket]
        code, out, err = await linkage("share", "preview", *anonymous)
        assert code == 1
        assert "say who is acting" in err
        code, out, err = await linkage("share", "status", "no-such-share", *who)
        assert code == 1
        assert "NOT_FOUND: no share 'no-such-share' at this node" in err


async def test_casework_from_the_cli(federation: LocalFederation, tmp_path: Path) -> None:
    async with running(federation) as cluster:

        def who(node: str) -> list[str]:
            return [
                "--actor-id",
                f"{node}-1",
                "--actor-role",
                "Practitioner",
                "--socket",
                str(cluster.nodes[node].config.api_socket),
            ]

        parent = f"nhs:{stories.PARENT_NHS} role=POSES_RISK type=ADULT_OTHER rel=parent"
        child = f"nhs:{stories.CHILD_NHS} role=AT_RISK type=CHILD rel=child basis=VERIFIED_NATIONAL"
        open_a1 = ("case", "open", "--case-ref", "A-1", "--person", parent, "--person", child, "--request-id", "o")
        code, out, err = await linkage(*open_a1, *who("amh"), "--json")
        assert code == 0, err
        assert await linkage(*open_a1, *who("amh"), "--json") == (0, out, "")  # repeated: the same case
        opened = json.loads(out)
        assert [p.get("identity_basis") for p in opened["people"]] == [None, "VERIFIED_NATIONAL"]
        amh_case = opened["case_id"]
        amh_parent, amh_child = (base64.b64decode(p["link_token"]) for p in opened["people"])
        for args, said in (
            (("involvement", amh_case), "No other agency is linked to this family.\n"),
            (("case", "assessments", amh_case), f"No assessment recorded in case {amh_case}: linkage case record"),
            (("case", "closure", amh_case), f"Case {amh_case}: closure none\n"),
        ):
            code, out, err = await linkage(*args, *who("amh"))
            assert code == 0 and out.startswith(said), (out, err)
        unknown = "01900000-0000-7000-8000-000000000000"
        code, out, err = await linkage("case", "show", unknown, *who("amh"))
        assert (code, out) == (1, "") and f"no case '{unknown}' at this node (`linkage case list` finds yours)" in err
        code, out, err = await linkage("case", "open", "--case-ref", "C-1", "--person", child, *who("csc"))
        assert code == 0, err
        assert "child AT_RISK CHILD, linked by VERIFIED_NATIONAL" in out
        csc_case = out.split()[1]

        code, out, err = await linkage("involvement", csc_case, *who("csc"))
        assert code == 0, err
        assert "Adult Mental Health Trust (NHS_MENTAL_HEALTH; law of ENG), contact: Duty team; linked to 1" in out
        code, out, err = await linkage("involvement", csc_case, *who("csc"), "--json")
        assert code == 0 and [a["node_id"] for a in json.loads(out)["agencies"]] == ["amh"], err

        code, out, err = await linkage("case", "close", amh_case, *who("amh"))
        assert code == 1 and "must be alerted before a case is closed" in err
        propose = ("case", "propose-closure", amh_case, "--respond-by", "2099-01-01", "--note", "Goals met")
        code, out, err = await linkage(*propose, "--request-id", "p", *who("amh"))
        assert code == 0, err
        assert await linkage(*propose, "--request-id", "p", *who("amh")) == (0, out, "")  # not refused as made
        assert "closure proposed" in out and "csc: no answer yet" in out

        intent = await next_item(cluster, "csc", env.MESSAGE_KIND_CLOSURE_INTENT)
        code, out, err = await linkage("inbox", "list", *who("csc"))
        assert code == 0, err
        assert f"{intent.message_id} [new] closure_intent from Adult Mental Health Trust: proposes to close" in out
        assert "(PLANNED_CLOSURE), answer by 2099-01-01" in out
        for wrong in (["--limit", "-1"], ["--after", "x"], ["--limit", str(2**32)]):
            code, out, err = await linkage("inbox", "list", *wrong, *who("csc"))  # was a ValueError traceback
            assert code == 2 and f"argument {wrong[0]}:" in err and "is not a whole number from 0 to" in err
        code, out, err = await linkage("inbox", "list", "--after", "999999", *who("csc"))
        assert (
            code == 1 and "past the last received item this node has numbered (1)" in err
        )  # not silence, as if it failed
        assert err.rstrip().endswith("Resume from 1")
        code, out, err = await linkage("inbox", "list", "--after", "1", *who("csc"))
        assert (code, out) == (0, "Nothing received after item 1.\n"), err
        for command in (("inbox", "list"), ("inbox", "watch"), ("share", "watch")):  # a watch waits for none
            code, out, err = await linkage(*command, *who("csc")[:-1], "/nowhere/api.sock")
            assert code == 1 and "no node is serving at /nowhere/api.sock" in err
        stale = tmp_path / "killed" / "api.sock"  # a node killed leaves its socket's file behind
        stale.parent.mkdir()
        with closing(socket.socket(socket.AF_UNIX)) as bound:
            bound.bind(str(stale))
        code, out, err = await linkage("inbox", "list", *who("csc")[:-1], str(stale))
        assert (code, err) == (1, f"linkage: no node is serving at {stale} (is `linkage node serve` running?)\n")
        code, out, err = await linkage(
            "case", "respond", intent.message_id, "--object", "--reason", "Too soon", *who("csc")
        )
        assert code == 0, err
        await next_item(cluster, "amh", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        code, out, err = await linkage("case", "closure", amh_case, *who("amh"))
        assert "Children's Social Care: object: Too soon" in out and "An objection is outstanding." in out

        # amh shares an assessment; csc's chronology shows it, with its source, currency and direction.
        assessment = stories.parent_risk_change(amh_parent, amh_child)
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(actor=PRACTITIONER, case_id=amh_case, assessment=assessment)
        )
        await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        code, out, err = await linkage("chronology", csc_case, *who("csc"))
        assert code == 0, err
        assert "Adult Mental Health Trust" in out and "PARENTAL_CAPACITY" in out and "increased" in out

        # The IG officer verifies the running node's log against what the gateway witnessed.
        await cluster.nodes["amh"].checkpoints.lodge()
        code, out, err = await audit_verify_from_gateway(cluster, "amh")
        assert code == 0, out + err
        assert "consistent with 1 of 1 lodged checkpoints" in out

        # amh closes over csc's objection, saying why; repeated with its request id, it is answered again.
        close = ("case", "close", amh_case, "--override-objections", "csc's worry is met by its own plan")
        code, out, err = await linkage(*close, "--request-id", "c", *who("amh"))
        assert code == 0 and f"Case {amh_case}: closure closed" in out, err
        assert await linkage(*close, "--request-id", "c", *who("amh")) == (0, out, "")  # not refused as closed


async def test_the_watch_commands_print_each_event_as_it_comes_into_a_pipe(federation: LocalFederation) -> None:
    """`share watch` follows delivery, and `inbox watch` what arrives, as it happens, where
    their output goes to a pipe (a log, `tee`, another program): block-buffered, the lines of
    `inbox watch` waited there until the buffer filled or the watch ended."""
    async with running(federation) as cluster:
        _, _, assessment_id = await think_family(cluster)

        async def watching(node: str, *command: str) -> asyncio.subprocess.Process:
            socket = str(cluster.nodes[node].config.api_socket)
            who = ("--actor-id", f"{node}-1", "--actor-role", "Duty worker", "--socket", socket)
            # As on a machine that does not ask Python for unbuffered output (CI's shell does).
            env = {k: v for k, v in os.environ.items() if not k.startswith("LINKAGE_") and k != "PYTHONUNBUFFERED"}
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "linkage",
                *command,
                *who,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )

        async def line(watch: asyncio.subprocess.Process) -> str:
            assert watch.stdout is not None
            async with asyncio.timeout(20):
                said = (await watch.stdout.readline()).decode()
            assert said, f"the watch ended: {(await watch.stderr.read()).decode() if watch.stderr else ''}"
            return said

        async def followed(shared: node_api_pb2.ShareSummaryResponse) -> list[str]:
            """What the watches print of a share, until csc has it: share watch's lines."""
            printed: list[str] = []
            while not any(" delivered " in s for s in printed if " csc " in s):
                printed.append(await line(deliveries))
            to_csc = next(r for r in shared.recipients if r.node_id == "csc")
            queued = f"csc queued (message {to_csc.message_id}, share {shared.share_id})"
            assert any(queued in s for s in printed), printed
            while " [new] summary_share from Adult Mental Health Trust: " not in await line(arrivals):
                pass  # the notices of who joined came first
            return printed

        deliveries, arrivals = await watching("amh", "share", "watch"), await watching("csc", "inbox", "watch")
        as_json = await watching("amh", "share", "watch", "--json")
        try:
            seen = await followed(await share(cluster, assessment_id))
            assert re.match(r"#\d+ [\d-]+ [\d:]+ UTC csc delivered \(message ", seen[-1]), seen
            # For a script or a log shipper: the same events, one JSON object a line.
            events = [json.loads(await line(as_json)) for _ in seen]
            assert [int(e["seq"]) for e in events] == [int(s.split()[0].lstrip("#")) for s in seen]
            assert (events[-1]["status"]["node_id"], events[-1]["status"]["state"]) == ("csc", "delivered")
            as_json.terminate()
            await as_json.wait()
            # Both nodes restarted (an upgrade, say): each watch waits for its node and goes on
            # after the last it printed, missing nothing and printing nothing twice.
            for node in ("amh", "csc"):
                await cluster.stop_node(node)
                await cluster.start_node(node)
            after = await followed(await share(cluster, assessment_id))
            numbers = [int(s.split()[0].lstrip("#")) for s in seen + after]
            assert numbers == sorted(set(numbers)), numbers
        finally:
            for watch in (deliveries, arrivals):
                watch.terminate()
                await watch.wait()
        for watch in (deliveries, arrivals):
            assert watch.stderr is not None
            said = (await watch.stderr.read()).decode()
            assert "the node stopped answering" in said and "the node is back; resuming after " in said, said
