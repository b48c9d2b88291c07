"""Recording, asking and answering from the CLI against running nodes: `linkage case record`,
`inbox ask` / `answer`, `case request-info`, `inbox reply`, and `inbox open` showing what
each item says."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from google.protobuf import json_format

from linkage import stories
from linkage.v1 import envelope_pb2 as env
from linkage.v1 import node_api_pb2, summary_pb2
from tests.harness import AGENCIES, PRACTITIONER, LocalFederation, linkage, next_item, running, wait_delivered
from tests.test_federation import _case_id, open_case
from tests.test_workflows import planned_closure


def as_written(summary: summary_pb2.RiskSummary) -> str:
    """The assessment as a person writes it for `case record`: link tokens in hex, as
    `case open` prints them."""
    written = json_format.MessageToDict(summary, preserving_proto_field_name=True)
    for person in written["people"]:
        person["link_token"] = base64.b64decode(person["link_token"]).hex()
    for item in written["risk_items"]:
        item["concerns"] = [base64.b64decode(t).hex() for t in item.get("concerns", [])]
    return json.dumps(written)


async def test_record_ask_answer_request_and_reply_from_the_cli(federation: LocalFederation, tmp_path: Path) -> None:
    async with running(federation) as cluster:

        def who(node: str) -> list[str]:
            socket = str(cluster.nodes[node].config.api_socket)
            return ["--actor-id", f"{node}-1", "--actor-role", "Practitioner", "--socket", socket]

        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        amh_case, csc_case = await _case_id(cluster, "amh"), await _case_id(cluster, "csc")

        assessment = tmp_path / "assessment.json"
        overdue = stories.parent_risk_change(parent, child)
        overdue.review_date.CopyFrom(summary_pb2.Date(year=2026, month=1, day=31))  # shared with a warning
        overdue.risk_items[0].sar_exemptions.append("SCH3_P2_HEALTH_SERIOUS_HARM")
        assessment.write_text(as_written(overdue))
        assert parent.hex() in assessment.read_text()
        record = ("case", "record", amh_case, "--assessment", str(assessment), "--request-id", "r1", *who("amh"))
        code, out, err = await linkage(*record)
        assert code == 0, err
        assert " recorded: summary " in out and ", version 1" in out
        assert await linkage(*record) == (0, out, "")  # repeated with its request id: not a version 2
        assessment_id = out.split()[1]
        decision = tmp_path / "decision.json"
        decision.write_text(json_format.MessageToJson(stories.override_decision()))
        code, out, err = await linkage(
            "share", "send", "--assessment", assessment_id, "--decision", str(decision), *who("amh")
        )
        assert code == 0, err

        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        code, out, err = await linkage("inbox", "open", shared.message_id, *who("csc"))
        assert code == 0, err
        assert "- PARENTAL_CAPACITY increased (current) HIGH PRACTITIONER_JUDGEMENT" in out
        assert "  Under the law of England (ENG): CA2004_S11\n" in out  # whose powers it cites
        assert "    Before disclosing it to the person it is about, consider: SCH3_P2_HEALTH_SERIOUS_HARM\n" in out
        assert "Review by 2026-01-31 (passed: ask the sender whether it still holds)" in out  # domain rule 12
        asking = ["inbox", "ask", shared.message_id, "--question", "Who cares for the child at night?"]
        code, out, err = await linkage(*asking, "--request-id", "q-1", *who("csc"))
        assert code == 0, err
        assert "Question sent:\n  amh: queued (message " in out
        again = await linkage(*asking, "--request-id", "q-1", *who("csc"))  # its answer never came, say
        assert again == (0, out, err)  # answered as the first time: one question goes
        csc_store = cluster.nodes["csc"].store
        assert csc_store is not None
        kind = env.MESSAGE_KIND_CLARIFICATION_REQUEST
        assert await csc_store.fetchone("SELECT COUNT(*) FROM outbox WHERE kind = ?", (kind,)) == (1,)

        question = await next_item(cluster, "amh", env.MESSAGE_KIND_CLARIFICATION_REQUEST)
        code, out, err = await linkage("inbox", "list", *who("amh"))
        assert "clarification_request from Children's Social Care: Who cares for the child at night?" in out
        for person, shown in ((parent, True), (bytes(32), False)):  # only what is about one person
            code, out, err = await linkage("inbox", "list", "--token", person.hex(), *who("amh"))
            assert code == 0 and (question.message_id in out) == shown, err
        code, out, err = await linkage("inbox", "open", question.message_id, *who("amh"))
        assert f"About {shared.message_id}: Who cares for the child at night?" in out
        assert f"Answer with: linkage inbox answer {question.message_id}" in out
        code, out, err = await linkage(
            "inbox", "answer", question.message_id, "--answer", "The grandparent stays over.", *who("amh")
        )
        assert code == 0, err
        answer = await next_item(cluster, "csc", env.MESSAGE_KIND_CLARIFICATION_RESPONSE)
        code, out, err = await linkage("inbox", "open", answer.message_id, *who("csc"))
        assert f"Answer to {question.message_id}: The grandparent stays over." in out

        ask = ["case", "request-info", csc_case, "--purpose", "s47 enquiry", "--what", "Any risk from the parent"]
        for wrong, said in (
            (["--needed-by", "2026-02-30"], "argument --needed-by: '2026-02-30' is not a date on the calendar"),
            (["--needed-by", "2020-01-31"], "INVALID_ARGUMENT: needed_by 2020-01-31 has passed"),
            (["--art6", "A6_1_Z"], "'A6_1_Z' is not in the art6 code list"),
            (["--dp-regime", "DPA2018_PART3"], "Under DPA 2018 Part 3, give the Schedule 8 condition relied on"),
        ):
            code, out, err = await linkage(*ask, "--art6", "A6_1_C", *wrong, *who("csc"))
            assert code in (1, 2) and said in err and "Traceback" not in err, err
        code, out, err = await linkage(
            *ask, "--art6", "A6_1_C", "--statutory-gateway", "CA1989_S47_9_REQUEST", "--needed-by", "2099-01-31",
            "--to", "amh", *who("csc"),
        )  # fmt: skip
        assert code == 0, err
        assert "Request sent:\n  amh: queued" in out

        request = await next_item(cluster, "amh", env.MESSAGE_KIND_INFORMATION_REQUEST)
        await wait_delivered(cluster.nodes["csc"], 2)  # the question, the request
        # Asked and not yet answered: the asker sees it waiting, the one asked what to do.
        code, out, err = await linkage("case", "requests", csc_case, *who("csc"))
        assert code == 0 and "  Adult Mental Health Trust: no answer yet (delivered)\n" in out, (out, err)
        code, out, err = await linkage("case", "requests", amh_case, *who("amh"))
        assert code == 0, err
        assert f"  Not answered yet: linkage inbox reply {request.message_id} provide|partial|decline ...\n" in out
        code, out, err = await linkage("case", "requests", amh_case, *who("amh"), "--json")
        assert code == 0, err
        (received,) = json.loads(out)["received"]
        assert (received["message_id"], received.get("answer")) == (request.message_id, None)
        code, out, err = await linkage("inbox", "open", request.message_id, *who("amh"))
        assert "Purpose: s47 enquiry\n  Asks for: Any risk from the parent" in out
        assert "Needed by: 2099-01-31; lawful basis: A6_1_C, CA1989_S47_9_REQUEST" in out
        code, out, err = await linkage("inbox", "reply", request.message_id, "provide", "--reason", "x", *who("amh"))
        assert code == 1 and "to provide information, name the assessment to send (--assessment)" in err
        code, out, err = await linkage(
            "inbox", "reply", request.message_id, "decline", "--reason", "Shared in full yesterday.", *who("amh")
        )
        assert code == 0, err
        declined = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE)
        code, out, err = await linkage("inbox", "open", declined.message_id, *who("csc"))
        assert f"Answer to {request.message_id}: declined\n  Why: Shared in full yesterday." in out
        code, out, err = await linkage(
            "inbox", "reply", request.message_id, "provide", "--assessment", assessment_id,
            "--decision", str(decision), *who("amh"),
        )  # fmt: skip
        assert code == 0, err
        provided = await next_item(cluster, "csc", env.MESSAGE_KIND_INFORMATION_RESPONSE, after_seq=declined.seq)
        code, out, err = await linkage("inbox", "open", provided.message_id, *who("csc"))
        assert f"Answer to {request.message_id}: provided" in out and "- PARENTAL_CAPACITY increased" in out
        code, out, err = await linkage("case", "requests", csc_case, *who("csc"))
        assert code == 0, err
        assert "Asked " in out and ": s47 enquiry (needed by 2099-01-31)" in out
        assert "  Adult Mental Health Trust: provided " in out and f"(message {provided.message_id})" in out
        code, out, err = await linkage("case", "requests", amh_case, *who("amh"))
        assert "Children's Social Care asked " in out and "  Asks for: Any risk from the parent" in out
        assert "  You answered: provided " in out


async def test_dates_tokens_and_files_a_person_gets_wrong_are_one_line(
    federation: LocalFederation, tmp_path: Path
) -> None:
    async with running(federation) as cluster:
        who = ["--actor-id", "amh-1", "--actor-role", "Practitioner"]
        who += ["--socket", str(cluster.nodes["amh"].config.api_socket)]
        await open_case(cluster, "amh", stories.think_family_people())
        case = await _case_id(cluster, "amh")
        parent = f"nhs:{stories.PARENT_NHS} role=POSES_RISK type=ADULT_OTHER rel=parent"
        child = f"nhs:{stories.CHILD_NHS} role=AT_RISK type=CHILD rel=child"
        code, out, err = await linkage("case", "open", "--case-ref", "B-1", "--person", parent, "--person", child, *who)
        assert code == 0, err
        other_case, token = out.split()[1], out.split()[2]
        assert len(token) == 64  # whole, so that it can be given back
        not_json = tmp_path / "assessment.json"
        not_json.write_text("[1, 2]")
        for args, said in (
            (("case", "propose-closure", case, "--respond-by", "tomorrow"), "'tomorrow' is not a date on the calendar"),
            (("case", "remove-person", case, "--token", "zz"), "a link token is 64 hex digits"),
            (("case", "record", case, "--assessment", str(not_json)), "it holds no JSON object"),
            (("case", "record", case, "--assessment", str(tmp_path)), "cannot read the assessment file"),
            (("share", "preview", "--assessment", "a", "--decision", str(not_json)), "cannot read the decision file"),
            (("share", "send", "--assessment", "a", "--decision", str(tmp_path)), "cannot read the decision file"),
            (("case", "add-person", case, "--person", "9434765919 role=AT_RISK"), "a person starts with SCHEME:VALUE"),
            (
                ("case", "add-person", case, "--person", "nhs:9434765919 colour=red"),
                "unknown person attribute 'colour'",
            ),
        ):
            code, out, err = await linkage(*args, *who)
            assert code in (1, 2) and said in err and "Traceback" not in err, err
        remove = ("case", "remove-person", other_case, "--token", token.upper(), "--request-id", "x", *who)
        code, out, err = await linkage(*remove)
        assert code == 0 and token not in out, err
        assert await linkage(*remove) == (0, out, "")  # repeated with its request id: not refused as gone
        sibling = f"nhs:{stories.UNRELATED_NHS} role=AT_RISK type=CHILD rel=sibling"
        add = ("case", "add-person", other_case, "--person", sibling, "--request-id", "y", *who)
        code, out, err = await linkage(*add)
        assert code == 0 and len(out.splitlines()) == 3, (out, err)  # the case, and its two people
        assert await linkage(*add) == (0, out, "")  # repeated with its request id: not refused as there
        # One whose identity must not reach another agency (a victim fleeing abuse, say).
        hidden = f"nhs:{stories.MS_B_NHS} role=AT_RISK type=ADULT_OTHER rel=parent protect"
        code, out, err = await linkage("case", "add-person", other_case, "--person", hidden, *who)
        assert code == 0 and " parent AT_RISK ADULT_OTHER (identity protected)\n" in out, (out, err)
        code, out, err = await linkage("case", "show", other_case, *who, "--json")
        assert code == 0, err
        (shown,) = json.loads(out)["cases"]
        assert {p["relationship"]: p.get("protect_identity", False) for p in shown["people"]} == {
            "child": False,
            "sibling": False,
            "parent": True,
        }


def _with_exemption(summary: summary_pb2.RiskSummary) -> summary_pb2.RiskSummary:
    summary.risk_items[0].sar_exemptions.append("SCH2_P3_THIRD_PARTY")  # the first item names a referrer
    return summary


async def test_handling_conditions_travel_and_are_shown_to_the_recipient_and_in_subject_access(
    federation: LocalFederation,
) -> None:
    """domain.md §4.1 and §6 rule 14: what a recipient may do with a summary travels, signed,
    in its decision; the recipient sees it first, and a subject access report flags it."""
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER,
                case_id=await _case_id(cluster, "amh"),
                assessment=_with_exemption(stories.parent_risk_change(parent, child)),
            )
        )
        decision = stories.override_decision()
        decision.handling_conditions.extend(["NO_ONWARD_SHARING", "DO_NOT_DISCLOSE_TO_SUBJECT"])
        await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=decision
            )
        )
        received = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        assert list(received.summary.decision.handling_conditions) == [
            "NO_ONWARD_SHARING",
            "DO_NOT_DISCLOSE_TO_SUBJECT",
        ]

        socket = str(cluster.nodes["csc"].config.api_socket)
        who = ("--actor-id", "csc-1", "--actor-role", "Social worker", "--socket", socket)
        code, out, err = await linkage("inbox", "open", received.message_id, *who)
        assert code == 0, err
        assert out.splitlines()[1] == "  Handling: NO_ONWARD_SHARING, DO_NOT_DISCLOSE_TO_SUBJECT"
        # The chronology is read and printed apart from the summary: it says so too.
        code, out, err = await linkage("chronology", await _case_id(cluster, "csc"), *who)
        assert code == 0, err
        assert out.count("  Handling: NO_ONWARD_SHARING, DO_NOT_DISCLOSE_TO_SUBJECT") == 2, out  # one per item
        assert out.count("  Before disclosing it to the person it is about, consider: SCH2_P3_THIRD_PARTY") == 1, out
        flagged = "[handling: NO_ONWARD_SHARING, DO_NOT_DISCLOSE_TO_SUBJECT]"
        for node, event in (("amh", "Decision whether to share"), ("csc", "Received from an agency")):
            toml = str(federation.node_configs[node].data_dir / "node.toml")
            code, out, err = await linkage("audit", "report", "--config", toml, "--person", f"nhs:{stories.PARENT_NHS}")
            assert code == 0, err
            assert any(event in line and flagged in line for line in out.splitlines()), out


async def test_a_subject_access_report_names_who_got_something_and_what_each_message_was(
    federation: LocalFederation,
) -> None:
    """An agency the agreement let have nothing is not among those a decision was shared
    with; a notice is named as one, not as a summary (nor as an empty headline); a read
    says whether its sender was told (only of a summary's first read)."""
    async with running(federation) as cluster:
        family = stories.think_family_people()
        parent, child = await open_case(cluster, "amh", family)
        await open_case(cluster, "csc", family)
        await open_case(cluster, "school", [family[1]])
        historical_only = stories.parent_risk_change(parent, child)
        del historical_only.risk_items[0]  # leaving the alcohol item, whose relevance to a school is not stated
        recorded = await cluster.api("amh").RecordAssessment(
            node_api_pb2.RecordAssessmentRequest(
                actor=PRACTITIONER, case_id=await _case_id(cluster, "amh"), assessment=historical_only
            )
        )
        await cluster.api("amh").ShareSummary(
            node_api_pb2.ShareSummaryRequest(
                actor=PRACTITIONER, assessment_id=recorded.assessment_id, decision=stories.override_decision()
            )
        )
        shared = await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
        for _ in range(2):  # its sender is told of the first read only
            await cluster.api("csc").OpenReceived(
                node_api_pb2.OpenReceivedRequest(actor=PRACTITIONER, message_id=shared.message_id)
            )

        async def report(node: str) -> list[dict[str, str]]:
            toml = str(federation.node_configs[node].data_dir / "node.toml")
            code, out, err = await linkage(
                "audit", "report", "--config", toml, "--person", f"nhs:{stories.PARENT_NHS}", "--json"
            )
            assert code == 0, err
            rows: list[dict[str, str]] = json.loads(out)
            return rows

        at_amh = await report("amh")
        (decided,) = [r for r in at_amh if r["what"].startswith("Decision whether to share")]
        assert "Oak Primary School: nothing (withheld: " in decided["what"]
        assert decided["with"] == "Children's Social Care"
        assert "Received from an agency (involvement notice)" in {r["what"] for r in at_amh}
        at_csc = [r["what"] for r in await report("csc")]
        assert "Queued for an agency (involvement notice)" in at_csc
        opened = [w for w in at_csc if w.startswith("Opened")]
        assert opened == ["Opened, its sender told (summary share)", "Opened (summary share)"]


async def test_involvement_closure_and_read_notices_are_listed_and_opened_from_the_cli(
    federation: LocalFederation,
) -> None:
    """What the inbox says of an agency joining, a closure proposed, answered and made, and a
    summary read: each in a line of `inbox list`, and in full by `inbox open`, with how to answer."""
    async with running(federation, nodes=("amh", "csc")) as cluster:

        def who(node: str) -> list[str]:
            socket = str(cluster.nodes[node].config.api_socket)
            return ["--actor-id", f"{node}-1", "--actor-role", "Practitioner", "--socket", socket]

        async def opened(node: str, kind: int, after: int = 0) -> tuple[str, str]:
            """The item's line in `inbox list`, and what `inbox open` shows of it."""
            item = await next_item(cluster, node, kind, after_seq=after)
            code, listed, err = await linkage("inbox", "list", *who(node))
            assert code == 0, err
            (line,) = [line for line in listed.splitlines() if item.message_id[-12:] in line]
            code, out, err = await linkage("inbox", "open", item.message_id, *who(node))
            assert code == 0, err
            return line, out

        await open_case(cluster, "amh", stories.think_family_people())
        await open_case(cluster, "csc", stories.think_family_people())
        _, joined = await opened("amh", env.MESSAGE_KIND_INVOLVEMENT_NOTICE)
        assert f"{AGENCIES['csc'][0]} joined; contact: Duty team" in joined

        case_id = await _case_id(cluster, "csc")
        await cluster.api("csc").ProposeClosure(planned_closure(PRACTITIONER, case_id, note="Goals met."))
        line, intent = await opened("amh", env.MESSAGE_KIND_CLOSURE_INTENT)
        assert "proposes to close (PLANNED_CLOSURE), answer by " in line
        assert "PLANNED_CLOSURE (RISK_REDUCED_GOALS_MET); respond by " in intent and "Note: Goals met." in intent
        (answer_with,) = [line.split("Answer with: ")[1] for line in intent.splitlines() if "Answer with: " in line]
        assert answer_with.startswith("linkage case respond ")
        intent_id = answer_with.split()[3]
        objection = ("--object", "--reason", "Alarms not fitted.")
        code, _, err = await linkage("case", "respond", intent_id, *objection, *who("amh"))
        assert code == 0, err
        line, answered = await opened("csc", env.MESSAGE_KIND_CLOSURE_RESPONSE)
        assert "Alarms not fitted." in line and "Answer: " in answered and "Alarms not fitted." in answered

        closed = await cluster.api("csc").CloseCase(
            node_api_pb2.CloseCaseRequest(
                actor=PRACTITIONER, case_id=case_id, override_objections_reason="Alarms fitted this morning."
            )
        )
        assert closed.state == "closed"
        line, notice = await opened("amh", env.MESSAGE_KIND_CLOSURE_NOTICE)
        assert "closed on " in line and "Closed on " in notice
