"""Information governance: the audit log an IG officer verifies, lists, exports and reports
from, with each tamper pattern detected; the gateway's metadata log and the cross-check."""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from contextlib import closing
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.audit import build, build_cross_check
from linkage import stories
from linkage.auditlog import GENESIS, AuditEntry, chain_hash
from linkage.cli import audit as audit_cli
from linkage.cli.audit_entries import EntryFilter, find_entries
from linkage.cli.main import build_parser
from linkage.cli.store_files import attach_read_only, read_only_store
from linkage.clock import SystemClock
from linkage.config import NodeConfig
from linkage.v1 import audit_pb2, node_api_pb2, summary_pb2
from linkage.v1 import envelope_pb2 as env
from node.audit_events import MEANING
from tests.harness import (
    PRACTITIONER,
    LocalFederation,
    drop_audit_guards,
    make_federation,
    next_item,
    running,
    wait_delivered,
)
from tests.test_federation import share_think_family

PARENT = f"nhs:{stories.PARENT_NHS}"


def linkage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linkage", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> LocalFederation:
    """The Think-Family share delivered, a decision not to share, checkpoints lodged; then stopped."""
    import asyncio

    federation = make_federation(tmp_path_factory.mktemp("ig"), SystemClock())

    async def play() -> None:
        async with running(federation) as cluster:
            await share_think_family(cluster)
            await wait_delivered(cluster.nodes["amh"], 2)
            await next_item(cluster, "csc", env.MESSAGE_KIND_SUMMARY_SHARE)
            store = cluster.nodes["amh"].store
            assert store is not None
            assessment_id = (await store.fetchone("SELECT assessment_id FROM assessments"))[0]
            await cluster.api("amh").ShareSummary(
                node_api_pb2.ShareSummaryRequest(
                    actor=PRACTITIONER,
                    assessment_id=assessment_id,
                    decision=summary_pb2.ShareDecision(
                        outcome=summary_pb2.DECISION_OUTCOME_NOT_SHARED,
                        rationale="Nothing new since yesterday's summary.",
                    ),
                )
            )
            assert await cluster.nodes["amh"].checkpoints.lodge()

    asyncio.run(play())
    return federation


def config(federation: LocalFederation, node: str) -> str:
    return str(federation.node_configs[node].data_dir / "node.toml")


def witnessed(federation: LocalFederation, node: str, out: Path) -> Path:
    """The checkpoints the gateway holds for a node, as an IG officer would export them."""
    with sqlite3.connect(federation.gateway_config.data_dir / "gateway.sqlite") as db:
        rows = db.execute(
            "SELECT signed FROM witnessed WHERE node_id = ? "
            "UNION ALL SELECT signed FROM witness_breaks WHERE node_id = ?",
            (node, node),
        ).fetchall()
    assert rows, "the node lodged no checkpoint"
    out.write_text("".join(json.dumps({"signed": base64.b64encode(r[0]).decode()}) + "\n" for r in rows))
    return out


def test_verify_passes_on_an_untouched_log(scenario: LocalFederation, tmp_path: Path) -> None:
    checkpoints = witnessed(scenario, "amh", tmp_path / "cp.jsonl")
    result = linkage("audit", "verify", "--config", config(scenario, "amh"), "--checkpoints", str(checkpoints))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout and "consistent with 1 of 1 lodged checkpoints" in result.stdout


def test_a_checkpoint_not_signed_by_its_node_is_ignored_and_said(scenario: LocalFederation, tmp_path: Path) -> None:
    """One that does not verify is no evidence either way: said, and the log checked against the rest."""
    checkpoints = witnessed(scenario, "amh", tmp_path / "cp.jsonl")
    signed = audit_pb2.SignedCheckpoint.FromString(base64.b64decode(json.loads(checkpoints.read_text())["signed"]))
    body = audit_pb2.Checkpoint.FromString(signed.checkpoint)
    body.root = bytes(32)  # a log other than the one the node signed
    signed.checkpoint = body.SerializeToString()
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps({"signed": base64.b64encode(signed.SerializeToString()).decode()}) + "\n")
    result = linkage("audit", "verify", "--config", config(scenario, "amh"), "--checkpoints", str(forged))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  ignored a checkpoint: bad_signature: checkpoint signature does not verify" in result.stdout
    assert "consistent with 1 of 1 lodged checkpoints" in result.stdout  # the one the store keeps


def test_a_copy_of_a_kept_checkpoint_whose_signature_does_not_verify_is_said(
    scenario: LocalFederation, tmp_path: Path
) -> None:
    """A copy given of the very checkpoint the store keeps, but with a signature that does not
    verify, is said to be ignored: that the store's own copy verifies does not hide it."""
    checkpoints = witnessed(scenario, "amh", tmp_path / "cp.jsonl")
    signed = audit_pb2.SignedCheckpoint.FromString(base64.b64decode(json.loads(checkpoints.read_text())["signed"]))
    signed.signature = bytes(len(signed.signature))
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps({"signed": base64.b64encode(signed.SerializeToString()).decode()}) + "\n")
    result = linkage("audit", "verify", "--config", config(scenario, "amh"), "--checkpoints", str(forged))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  ignored a checkpoint: bad_signature: checkpoint signature does not verify" in result.stdout
    assert "consistent with 1 of 1 lodged checkpoints" in result.stdout  # the store's copy, once


def _copy_node(federation: LocalFederation, node: str, tmp_path: Path) -> Path:
    """A copy of the node's folder to tamper with (the original stays intact)."""
    target = tmp_path / node
    shutil.copytree(federation.node_configs[node].data_dir, target, ignore=shutil.ignore_patterns("api.sock"))
    return target


def _rechain(db: sqlite3.Connection) -> None:
    """What a capable insider does after rewriting: recompute every hash."""
    prev = GENESIS
    for seq, entry in db.execute("SELECT seq, entry FROM audit ORDER BY seq").fetchall():
        prev = chain_hash(prev, entry)
        db.execute("UPDATE audit SET hash = ? WHERE seq = ?", (prev, seq))


def _edit(db: sqlite3.Connection) -> None:
    db.execute(
        "UPDATE audit SET entry = replace(entry, 'NOT_SHARED', 'SHARED') WHERE event = 'share.decision' "
        "AND entry LIKE '%NOT_SHARED%'"
    )


def _insert(db: sqlite3.Connection) -> None:
    for (seq,) in db.execute("SELECT seq FROM audit WHERE seq >= 3 ORDER BY seq DESC").fetchall():
        db.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
    entry, digest = db.execute("SELECT entry, hash FROM audit WHERE seq = 2").fetchone()
    db.execute(
        "INSERT INTO audit(seq, ts_ms, event, counterpart, entry, hash) VALUES (3, 0, 'x', '', ?, ?)", (entry, digest)
    )


def _reorder(db: sqlite3.Connection) -> None:
    a = db.execute("SELECT entry, hash FROM audit WHERE seq = 3").fetchone()
    b = db.execute("SELECT entry, hash FROM audit WHERE seq = 4").fetchone()
    db.execute("UPDATE audit SET entry = ?, hash = ? WHERE seq = 3", b)
    db.execute("UPDATE audit SET entry = ?, hash = ? WHERE seq = 4", a)


def _delete(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM audit WHERE seq = 3")


def _truncate(db: sqlite3.Connection) -> None:
    last = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    db.execute("DELETE FROM audit WHERE seq > ?", (last - 2,))


def _rewrite(db: sqlite3.Connection) -> None:
    db.execute("UPDATE audit SET entry = replace(entry, 'Alex Example', 'Someone Else')")
    _rechain(db)


TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    "edit": (_edit, "was changed"),
    "delete": (_delete, "first bad entry: 3"),
    "insert": (_insert, "first bad entry: 3"),
    "reorder": (_reorder, "first bad entry: 3"),
    "truncate": (_truncate, "were removed"),
    "rewrite": (_rewrite, "differ from the checkpoint"),
}


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_every_tamper_pattern_is_detected(scenario: LocalFederation, tmp_path: Path, kind: str) -> None:
    checkpoints = witnessed(scenario, "amh", tmp_path / "cp.jsonl")
    folder = _copy_node(scenario, "amh", tmp_path)
    with sqlite3.connect(folder / "store.sqlite") as db:
        drop_audit_guards(db)
        tamper, expected = TAMPERS[kind]
        tamper(db)
    result = linkage("audit", "verify", "--config", str(folder / "node.toml"), "--checkpoints", str(checkpoints))
    assert result.returncode == 1, result.stdout
    assert "FAILED" in result.stdout and expected in result.stdout, result.stdout
    if kind == "rewrite":  # the chain alone cannot see it; a checkpoint held outside the log can
        alone = linkage("audit", "verify", "--config", str(folder / "node.toml"))
        assert alone.returncode == 1 and "was cosigned by the witness" in alone.stdout, alone.stdout
        assert "differ from the checkpoint" in alone.stdout, alone.stdout  # the one the node kept
        with sqlite3.connect(folder / "store.sqlite") as db:
            db.execute("DELETE FROM witnessed")  # so the insider drops that too; the gateway still holds it
        alone = linkage("audit", "verify", "--config", str(folder / "node.toml"))
        assert alone.returncode == 0 and "holds no checkpoint cosigned by the witness" in alone.stdout, alone.stdout


def test_a_cosignature_that_does_not_verify_is_reported_and_proves_nothing(
    scenario: LocalFederation, tmp_path: Path
) -> None:
    """As after a change of the gateway's witness key: the kept checkpoint is still checked (it is
    the node's own signature), its cosignature is ignored, and verify says so."""
    folder = _copy_node(scenario, "amh", tmp_path)
    with sqlite3.connect(folder / "store.sqlite") as db:
        (kept,) = db.execute("SELECT cosignature FROM witnessed").fetchone()
        cosignature = audit_pb2.Cosignature.FromString(kept)
        cosignature.signature = bytes(64)
        db.execute("UPDATE witnessed SET cosignature = ?", (cosignature.SerializeToString(),))
    result = linkage("audit", "verify", "--config", str(folder / "node.toml"))
    assert result.returncode == 0, result.stdout
    assert "ignored the cosignature of the checkpoint this store keeps" in result.stdout, result.stdout
    assert "consistent with 1 of 1" in result.stdout, result.stdout


def test_list_export_and_report_match_the_scenario(scenario: LocalFederation, tmp_path: Path) -> None:
    listed = linkage("audit", "list", "--config", config(scenario, "amh"), "--person", PARENT, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    decisions = [e for e in entries if e["event"] == "share.decision"]
    assert [e["decision"] for e in decisions] == ["DECISION_OUTCOME_SHARED_PARTIAL", "DECISION_OUTCOME_NOT_SHARED"]
    not_shared = linkage("audit", "list", "--config", config(scenario, "amh"), "--decision", "NOT_SHARED", "--json")
    assert [json.loads(x)["rationale"] for x in not_shared.stdout.splitlines()] == [
        "Nothing new since yesterday's summary."
    ]
    to_school = linkage(
        "audit", "list", "--config", config(scenario, "amh"), "--counterpart", "school", "--event", "message.", "--json"
    )
    assert {json.loads(x)["event"] for x in to_school.stdout.splitlines()} >= {"message.queued", "message.delivered"}
    # Read as text: a line of headings, then one line an entry, its columns where the headings are.
    text = linkage("audit", "list", "--config", config(scenario, "amh"), "--person", PARENT).stdout.splitlines()
    headings, *lines = text
    assert headings.split() == ["seq", "time", "event", "by", "with", "decision", "why"]
    assert len(lines) == len(entries)
    column = {h: headings.index(f" {h} ") + 1 for h in ("event", "decision")}
    for line, e in zip(lines, entries, strict=True):
        assert line[column["event"] :].startswith(f"{e['event']} "), line
        assert line[column["decision"] :].startswith(e["decision"].removeprefix("DECISION_OUTCOME_") or "-"), line
    assert "SHARED_PARTIAL" in text[1 + entries.index(decisions[0])]

    out = tmp_path / "audit.csv"
    assert (
        linkage(
            "audit",
            "export",
            "--config",
            config(scenario, "amh"),
            "--person",
            PARENT,
            "--format",
            "csv",
            "--out",
            str(out),
        ).returncode
        == 0
    )
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(entries)
    assert rows[0]["actor_name"] == PRACTITIONER.name
    assert [r["meaning"] for r in rows] == [MEANING[e["event"]] for e in entries]  # read in a spreadsheet
    stamped = dt.datetime.fromisoformat(rows[0]["time_utc"]).replace(tzinfo=dt.UTC)
    assert int(stamped.timestamp()) == int(rows[0]["ts_ms"]) // 1000  # UTC, as its column says
    for name, form in (("audit.jsonl", ["--format", "jsonl"]), ("named.json", [])):  # or as the file is named
        jsonl = tmp_path / name
        exported = linkage("audit", "export", "--config", config(scenario, "amh"), *form, "--out", str(jsonl))
        assert exported.returncode == 0 and exported.stdout.endswith(f"entries to {jsonl} (JSON lines)\n")
        assert all(json.loads(line)["seq"] for line in jsonl.read_text().splitlines())

    report = linkage("audit", "report", "--config", config(scenario, "amh"), "--person", PARENT, "--json")
    rows_r = json.loads(report.stdout)
    shared = next(r for r in rows_r if r["what"].startswith("Decision whether to share - Children"))
    assert shared["with"] == "Children's Social Care, Oak Primary School"
    assert "withheld: risk item 2 (SUBSTANCE_MISUSE): relevance to SCHOOL not stated" in shared["what"]
    assert shared["ground"] == "A6_1_E,A9_2_G,SCH1_P18,CA2004_S11,CHILD_AT_RISK; law of ENG"
    assert shared["why"].startswith("A change in the parent's treatment")
    received = json.loads(
        linkage("audit", "report", "--config", config(scenario, "csc"), "--person", PARENT, "--json").stdout
    )
    got = next(r for r in received if r["what"].startswith("Received from an agency"))
    assert '"Parent has stopped prescribed medication' in got["what"] and got["with"] == "Adult Mental Health Trust"


def test_list_export_register_and_cross_check_hold_one_entry_at_a_time_not_the_whole_log(tmp_path: Path) -> None:
    """A node's log runs to millions of entries in a year: listing, exporting, registering
    or cross-checking it must not need the memory of all of them at once. Python's own
    allocations are counted while each command goes through 5,000 entries (1,667 of them
    decisions whether to share), or 5,000 messages and the gateway's 20,000 entries: under
    0.2 MB at the most, against 11 MB had they all been held at once."""
    entries = 5_000
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    toml = str(federation.node_configs["amh"].data_dir / "node.toml")
    build(NodeConfig.load(Path(toml)).store_path, entries)
    build_cross_check(tmp_path / "gateway.sqlite", NodeConfig.load(Path(toml)).store_path, "amh", entries)
    out = tmp_path / "export"
    for command in (
        ("export", "--format", "csv", "--out", str(out)),
        ("export", "--format", "jsonl", "--out", str(out)),
        ("list", "--json"),
        ("list",),
        ("register", "--csv", str(out)),
        ("register", "--json"),
        ("cross-check", "--gateway-db", str(tmp_path / "gateway.sqlite")),
    ):
        args = build_parser().parse_args(["audit", *command, "--config", toml])
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            tracemalloc.start()
            try:
                assert args.handler(args) == 0
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert peak < 2_000_000, (command, peak)
        if command[0] == "register" and "--csv" in command:  # every decision written, the last too
            with out.open() as written:
                assert [int(r["id"].removeprefix("s-")) for r in csv.DictReader(written)] == list(
                    range(3, entries + 1, 3)
                )
        if command[0] == "export":  # every entry written, the last too
            lines = out.read_text().splitlines()
            if "csv" in command:
                assert len(lines) == 1 + entries and lines[-1].startswith(f"{entries},")
            else:
                assert len(lines) == entries and json.loads(lines[-1])["seq"] == entries


def test_the_register_of_sharing_lists_every_decision_and_receipt_with_totals(
    scenario: LocalFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "register.csv"
    sent = linkage("audit", "register", "--config", config(scenario, "amh"), "--json", "--csv", str(table))
    assert sent.returncode == 0, sent.stderr
    found = json.loads(sent.stdout)
    totals = found["totals"]["sent"]
    assert totals["decisions"] == {"SHARED_PARTIAL": 1, "NOT_SHARED": 1}
    assert set(totals["data_categories_by_agency_type"]) == {"LA_CHILDRENS_SOCIAL_CARE", "SCHOOL"}
    assert "HEALTH" in totals["data_categories_by_agency_type"]["SCHOOL"]
    assert totals["lawful_grounds"]["CA2004_S11"] == 1 and totals["consent"] == {"REFUSED": 1}
    assert totals["jurisdictions"] == {"ENG": 1}  # a decision not to share moved nothing: not counted
    assert found["totals"]["received"]["decisions"] == {}
    shared, declined = found["rows"]
    assert shared["agencies"] == "Children's Social Care; Oak Primary School"
    assert shared["lawful_ground"] == "A6_1_E,A9_2_G,SCH1_P18,CA2004_S11,CHILD_AT_RISK"
    assert (shared["approved_by"], shared["jurisdiction"]) == ("amh-020", "ENG")
    assert (declined["decision"], declined["agencies"], declined["why"]) == (
        "NOT_SHARED",
        "",
        "Nothing new since yesterday's summary.",
    )
    with table.open() as written:
        assert [r["decision"] for r in csv.DictReader(written)] == ["SHARED_PARTIAL", "NOT_SHARED"]
    # How it is kept and protected, for the record of processing: read from the node, not assumed.
    logged = len(linkage("audit", "list", "--config", config(scenario, "amh"), "--json").stdout.splitlines())
    kept = found["protection"]
    assert kept["kept"].endswith("until withdrawn or erased ([retention] summaries_days is 0); the audit log in full")
    assert "mutual TLS 1.3" in kept["in transit"]
    assert "(HPKE with X25519 and AES-128-GCM; signed with Ed25519)" in kept["in transit"]
    assert kept["audit log"].startswith(f"{logged} entries, each chained to the one before by SHA-256; the latest ")
    assert "checkpoint the gateway's witness cosigned covers " in kept["audit log"]
    assert kept["backups"] == "none recorded (`linkage backup create` takes one, encrypted)"
    monkeypatch.setenv("LINKAGE_RETENTION_SUMMARIES_DAYS", "730")  # as the node runs with it
    purging = linkage("audit", "register", "--config", config(scenario, "amh"), "--json")
    assert (
        "are kept 730 days, then purged ([retention] summaries_days)"
        in json.loads(purging.stdout)["protection"]["kept"]
    )
    monkeypatch.delenv("LINKAGE_RETENTION_SUMMARIES_DAYS")

    received = linkage("audit", "register", "--config", config(scenario, "csc"))
    assert received.returncode == 0, received.stderr
    assert "How it is kept and protected (UK GDPR Art. 30(1)(f) and (g)):\n  kept: " in received.stdout
    assert "Summaries received: 1\n  from NHS_MENTAL_HEALTH: " in received.stdout
    assert "    from Adult Mental Health Trust: " in received.stdout
    assert "    ground: A6_1_E,A9_2_G,SCH1_P18,CA2004_S11,CHILD_AT_RISK; law of ENG; consent REFUSED" in received.stdout
    # The recipient's own entry states every ground the sender's decision gave, as the sender's does.
    entries = linkage("audit", "list", "--config", config(scenario, "csc"), "--event", "message.received", "--json")
    (arrived,) = [e for e in map(json.loads, entries.stdout.splitlines()) if e["detail"]["kind"] == "summary_share"]
    assert arrived["lawful_ground"] == "A6_1_E,A9_2_G,SCH1_P18,CA2004_S11,CHILD_AT_RISK"
    later = linkage("audit", "register", "--config", config(scenario, "csc"), "--since", "2999-01-01", "--json")
    assert json.loads(later.stdout)["rows"] == []


def test_what_an_ig_officer_mistypes_gets_a_plain_answer(scenario: LocalFederation, tmp_path: Path) -> None:
    """A date that is not one, a file that holds no checkpoints or is no store, a folder
    for a file, a token that is not one: each is said in a line (each was a traceback, or
    found nothing). A person the log does not mention is said so (it printed nothing)."""
    when = linkage("audit", "list", "--config", config(scenario, "amh"), "--since", "yesterday")
    assert when.returncode == 1 and "Traceback" not in when.stderr
    assert "--since: 'yesterday' is not a date or time, e.g. 2026-11-01" in when.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("checkpoints from the school, as promised\n")
    verify = linkage("audit", "verify", "--config", config(scenario, "amh"), "--checkpoints", str(notes))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert f"line 1 of {notes} is not a checkpoint" in verify.stderr
    nobody = linkage("audit", "report", "--config", config(scenario, "amh"), "--person", "la-csc:NOT-IN-THE-LOG")
    assert nobody.returncode == 0
    assert nobody.stdout == "no entry of this node's audit log is about la-csc:NOT-IN-THE-LOG\n"
    for args, said in (
        (("cross-check", "--gateway-db", str(notes)), f"{notes} is not a store Linkage can read"),
        (("list", "--token", "zz"), "--token: a link token is 64 hex digits"),
        (("list", "--person", "nhs:943 476 5918"), "--person: NHS number fails the modulus-11 check"),
        (("verify", "--jobs", "all"), "--jobs: 'all' is not a whole number from 0 to 64"),
        (("export", "--format", "csv", "--out", str(tmp_path)), f"Is a directory: '{tmp_path}'"),
    ):
        refused = linkage("audit", args[0], "--config", config(scenario, "amh"), *args[1:])
        assert refused.returncode in (1, 2) and said in refused.stderr and "Traceback" not in refused.stderr
    listed = linkage("audit", "list", "--config", config(scenario, "amh"), "--json").stdout.splitlines()
    token = next(t for e in map(json.loads, listed) for t in e["tokens"])
    upper = linkage("audit", "list", "--config", config(scenario, "amh"), "--token", token.upper(), "--json")
    assert upper.stdout and all(token in json.loads(e)["tokens"] for e in upper.stdout.splitlines())
    # A filter that matches nothing says so, naming what was given (a mistyped event printed nothing).
    typo = linkage("audit", "list", "--config", config(scenario, "amh"), "--event", "share.decided", "--token", token)
    assert typo.returncode == 0 and typo.stdout == (
        f"no entry of this node's audit log matches --token {token} --event share.decided\n"
    ), typo
    assert linkage("audit", "list", "--config", config(scenario, "amh"), "--event", "x", "--json").stdout == ""
    # A reader that goes away (`| head -1`) ends the listing quietly, not in a traceback.
    with subprocess.Popen(
        [sys.executable, "-m", "linkage", "audit", "list", "--config", config(scenario, "amh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as gone:
        assert gone.stdout is not None and gone.stderr is not None
        gone.stdout.close()
        assert gone.wait() == 1 and gone.stderr.read() == b""
    # A directory file that is not one (half copied, say) is named, not a traceback.
    good = Path(config(scenario, "amh"))
    broken, bad_config = tmp_path / "directory.pb", good.with_name("broken-directory.toml")
    broken.write_bytes(b"\xff\xff\xff")
    bad_config.write_text(good.read_text().replace('directory = "directory.pb"', f'directory = "{broken}"'))
    assert bad_config.read_text() != good.read_text()
    unreadable = linkage("audit", "register", "--config", str(bad_config))
    assert unreadable.returncode == 2 and "Traceback" not in unreadable.stderr
    assert f"[federation] directory: cannot read {broken} (malformed: " in unreadable.stderr


def test_html_report_renders_in_a_real_browser(scenario: LocalFederation, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium is not installed here")
    page = tmp_path / "report.html"
    assert (
        linkage(
            "audit", "report", "--config", config(scenario, "amh"), "--person", PARENT, "--html", str(page)
        ).returncode
        == 0
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "<h1>Subject access report: Adult Mental Health Trust</h1>" in dom
    assert "Decision whether to share" in dom and "Children's Social Care, Oak Primary School" in dom
    assert dom.count("<tr>") >= 5
    assert stories.PARENT_NHS not in dom  # the report names the person only by the end of the number
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a page was painted


def test_checkpoints_travel_in_receipts_and_vouch_for_the_peer(scenario: LocalFederation, tmp_path: Path) -> None:
    held = tmp_path / "csc-checkpoints.jsonl"
    result = linkage("audit", "checkpoints", "--config", config(scenario, "amh"), "--of", "csc", "--out", str(held))
    assert result.returncode == 0 and "wrote 1 checkpoints of csc's audit log" in result.stdout
    verified = linkage("audit", "verify", "--config", config(scenario, "csc"), "--checkpoints", str(held))
    # the peer's checkpoint from the receipt, and the one csc keeps, cosigned by the witness
    assert verified.returncode == 0 and "consistent with 2 of 2" in verified.stdout, verified.stdout
    # A node amh holds nothing from (a mistyped id) is said so, and no empty file passes for its checkpoints.
    none = tmp_path / "cs-checkpoints.jsonl"
    refused = linkage("audit", "checkpoints", "--config", config(scenario, "amh"), "--of", "cs", "--out", str(none))
    assert refused.returncode == 1 and not none.exists(), refused
    assert (
        "holds no checkpoint of the audit log of 'cs' (no receipt from that node carries one); it holds receipts "
        "from csc, school" in refused.stderr
    ), refused.stderr


def test_gateway_metadata_log_verifies_and_cross_check_agrees(scenario: LocalFederation, tmp_path: Path) -> None:
    gateway_toml = scenario.gateway_config.data_dir / "gateway.toml"
    result = linkage("audit", "verify", "--gateway-config", str(gateway_toml))
    assert result.returncode == 0 and "OK: gateway metadata log" in result.stdout
    gateway_db = scenario.gateway_config.data_dir / "gateway.sqlite"
    with sqlite3.connect(gateway_db) as db:
        entries = [json.loads(r[0]) for r in db.execute("SELECT entry FROM metalog")]
    forwarded = [e for e in entries if e["event"] == "envelope.forwarded"]
    assert len(forwarded) >= 2 and all(e["detail"]["size"] > 0 for e in forwarded)
    agree = linkage("audit", "cross-check", "--config", config(scenario, "amh"), "--gateway-db", str(gateway_db))
    assert agree.returncode == 0 and "AGREE" in agree.stdout, agree.stdout

    copy = tmp_path / "gateway.sqlite"
    shutil.copy(gateway_db, copy)
    with sqlite3.connect(copy) as db:
        db.execute("DROP TRIGGER metalog_purged_only")
        db.execute(
            "DELETE FROM metalog WHERE seq = (SELECT MIN(seq) FROM metalog WHERE event = "
            "'envelope.forwarded' AND entry LIKE '%\"id\":\"amh\"%')"
        )
    disagree = linkage("audit", "cross-check", "--config", config(scenario, "amh"), "--gateway-db", str(copy))
    assert disagree.returncode == 1 and "the gateway has no record of forwarding it" in disagree.stdout

    # An entry gone from a copy of the gateway's folder: verifying its log names which.
    folder = tmp_path / "gateway"
    shutil.copytree(scenario.gateway_config.data_dir, folder, ignore=shutil.ignore_patterns("*.lock"))
    with sqlite3.connect(folder / "gateway.sqlite") as db:
        db.execute("DROP TRIGGER metalog_purged_only")
        (gone,) = db.execute("SELECT MIN(seq) FROM metalog WHERE event = 'envelope.forwarded' AND seq > 1").fetchone()
        db.execute("DELETE FROM metalog WHERE seq = ?", (gone,))
    broken = linkage("audit", "verify", "--gateway-config", str(folder / "gateway.toml"))
    assert broken.returncode == 1 and broken.stdout.startswith("FAILED: gateway metadata log"), broken.stdout
    assert f"  first bad entry: {gone}: entry {gone} is missing or out of order" in broken.stdout


def test_cross_check_names_every_way_a_node_and_the_gateway_disagree(tmp_path: Path) -> None:
    """Stores that agree, then one change of each kind, each named by its message; what the
    gateway forwarded for another node is no part of it."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    toml = str(federation.node_configs["amh"].data_dir / "node.toml")
    store, gateway_db = NodeConfig.load(Path(toml)).store_path, tmp_path / "gateway.sqlite"
    build_cross_check(gateway_db, store, "amh", 50)

    def cross_check() -> tuple[int, str]:
        args = build_parser().parse_args(["audit", "cross-check", "--config", toml, "--gateway-db", str(gateway_db)])
        with contextlib.redirect_stdout(io.StringIO()) as out:
            status = args.handler(args)
        return status, out.getvalue()

    assert cross_check() == (0, "AGREE: 50 outgoing messages, 50 forwarded by the gateway\n")
    with sqlite3.connect(store) as db:
        db.execute("UPDATE outbox SET receipt = NULL WHERE message_id = 'm-1'")
        db.execute("UPDATE outbox SET recipient = 'police' WHERE message_id = 'm-2'")
        db.execute("DELETE FROM outbox WHERE message_id = 'm-3'")
        db.execute("UPDATE outbox SET state = 'queued' WHERE message_id = 'm-5'")  # not sent yet: agrees
    with sqlite3.connect(gateway_db) as db:
        db.execute("DELETE FROM metalog WHERE instr(entry, '\"m-4\"') AND event = 'envelope.forwarded'")
        db.execute("DELETE FROM metalog WHERE instr(entry, '\"m-5\"') AND event = 'envelope.forwarded'")
    assert cross_check() == (
        1,
        "  m-1: delivered without a stored receipt\n"
        "  m-2: forwarded to school, addressed to police\n"
        "  m-4: the node says delivered, the gateway has no record of forwarding it\n"
        "  m-3: the gateway forwarded it from this node, the node has no record of it\n"
        "DISAGREE: 4 problems, above\n",
    )


def test_the_gateway_operator_lists_and_exports_its_metadata_log(scenario: LocalFederation, tmp_path: Path) -> None:
    """The federation's operator asks what the gateway did, for a node or a message, with the
    tools an IG officer uses on a node's log: which node made each entry, and which it went
    to; a person's identifier or token is refused, as the gateway holds neither."""
    gateway = str(scenario.gateway_config.data_dir / "gateway.toml")
    with sqlite3.connect(scenario.gateway_config.data_dir / "gateway.sqlite") as db:
        entries = [json.loads(r[0]) for r in db.execute("SELECT entry FROM metalog ORDER BY seq")]
    listed = linkage("audit", "list", "--gateway-config", gateway, "--json")
    assert listed.returncode == 0 and [json.loads(line) for line in listed.stdout.splitlines()] == entries

    to_school = linkage("audit", "list", "--gateway-config", gateway, "--event", "envelope.", "--counterpart", "school")
    headings, *lines = to_school.stdout.splitlines()
    assert headings.split() == ["seq", "time", "event", "node", "sent", "to", "outcome", "message"]
    assert lines and all(line.split()[4:8] == ["envelope.forwarded", "amh", "school", "-"] for line in lines), lines
    sent = {e["message_id"] for e in entries if e["event"] == "envelope.forwarded" and e["counterpart"] == "school"}
    assert {line.split()[-1] for line in lines} == sent  # which message, where a node's log gives why
    school = [e for e in entries if "school" in (e["actor"]["id"], e["counterpart"])]
    about = linkage("audit", "list", "--gateway-config", gateway, "--node", "school", "--json").stdout.splitlines()
    assert [json.loads(line) for line in about] == school and {e["event"] for e in school} >= {
        "connect",
        "envelope.forwarded",
    }

    exported = tmp_path / "metalog.jsonl"
    done = linkage("audit", "export", "--gateway-config", gateway, "--node", "school", "--out", str(exported))
    assert done.returncode == 0 and f"exported {len(school)} entries" in done.stdout
    assert [json.loads(line) for line in exported.read_text().splitlines()] == school

    none = linkage("audit", "list", "--gateway-config", gateway, "--node", "schol")
    assert (none.returncode, none.stdout) == (0, "no entry of the gateway's metadata log matches --node schol\n")
    person = linkage("audit", "list", "--gateway-config", gateway, "--person", PARENT)
    assert person.returncode == 1 and "the gateway's metadata log holds no link tokens" in person.stderr
    node_log = linkage("audit", "list", "--config", config(scenario, "amh"), "--node", "school")
    assert node_log.returncode == 1 and "for a node's, give --counterpart" in node_log.stderr
    both = linkage("audit", "list", "--config", config(scenario, "amh"), "--gateway-config", gateway)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_a_store_is_read_wherever_it_lies_whatever_its_folder_is_called(tmp_path: Path) -> None:
    """A path is given to SQLite as a URI (read-only), where '?', '#' and '%' mean something:
    each is escaped, so the store read is the one named (before, another file was opened)."""
    folder = tmp_path / "IG exports? #2 (100%)"
    folder.mkdir()
    for name in ("node.sqlite", "gateway.sqlite"):
        with closing(sqlite3.connect(folder / name)) as db:
            db.execute(f"CREATE TABLE {name.split('.')[0]}(n)")
    with closing(read_only_store(folder / "node.sqlite")) as db:
        attach_read_only(db, folder / "gateway.sqlite", "gw")
        assert db.execute("SELECT count(*) FROM node, gw.gateway").fetchone() == (0,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("INSERT INTO gw.gateway VALUES (1)")
    with pytest.raises(SystemExit, match="no store at"):
        read_only_store(folder / "missing.sqlite")


def test_a_metadata_log_past_retention_still_verifies_and_cross_checks_what_it_kept(
    scenario: LocalFederation, tmp_path: Path
) -> None:
    """A year on, with a 30-day retention, every entry of the scenario is purged: the IG officer's
    verify says so and from when, and cross-check compares only what the gateway still holds."""
    import asyncio

    from gateway.db import GatewayDb
    from gateway.metalog import MetaLog
    from linkage.clock import DAY_MS, ManualClock, SystemClock

    gateway = tmp_path / "gateway"
    shutil.copytree(scenario.gateway_config.data_dir, gateway)

    async def a_year_on() -> int:
        db = await GatewayDb.open(gateway / "gateway.sqlite")
        try:
            log = MetaLog(db, ManualClock(SystemClock().now_ms() + 365 * DAY_MS), "gateway")
            await log.load()
            purged = await log.purge(keep_days=30)
            await log.flush()
            return purged
        finally:
            await db.close()

    purged = asyncio.run(a_year_on())
    assert purged > 0
    verified = linkage("audit", "verify", "--gateway-config", str(gateway / "gateway.toml"))
    assert verified.returncode == 0 and "OK: gateway metadata log, 1 entries checked" in verified.stdout
    assert f"entries 1-{purged} (to " in verified.stdout and "purged by retention" in verified.stdout
    checked = linkage(
        "audit", "cross-check", "--config", config(scenario, "amh"), "--gateway-db", str(gateway / "gateway.sqlite")
    )
    assert checked.returncode == 0 and "AGREE: 0 outgoing messages" in checked.stdout, checked.stdout
    assert "before the gateway's retention horizon" in checked.stdout


EVENTS = ["share.decision", "message.queued", "message.delivered", "chronology.viewed", "retention.purged"]
NODES = ["csc", "school", "police", "amh-2", 'quo"te']  # the last as JSON escapes it
TOKENS = [f"{n:064x}" for n in range(4)]


@st.composite
def audit_logs(draw: st.DrawFn) -> list[str]:
    return [
        AuditEntry(
            seq=seq,
            ts_ms=draw(st.integers(0, 100)),
            event=draw(st.sampled_from(EVENTS)),
            actor={"id": draw(st.sampled_from(["p-1", *NODES])), "name": 'Émile "Test"', "role": "Social worker"},
            tokens=sorted(draw(st.sets(st.sampled_from(TOKENS), max_size=3))),
            counterpart=",".join(draw(st.lists(st.sampled_from(NODES), max_size=2, unique=True))),
            decision=draw(st.sampled_from(["", "DECISION_OUTCOME_SHARED", "DECISION_OUTCOME_NOT_SHARED"])),
            rationale=draw(st.sampled_from(["", *NODES])),  # a name the text holds, but not as a party
        ).canonical()
        for seq in range(1, draw(st.integers(0, 30)) + 1)
    ]


filters = st.builds(
    EntryFilter,
    token=st.none() | st.sampled_from(TOKENS),
    event=st.none()
    | st.sampled_from(["share.", "message.", "message.delivered", "chron", "x"])
    | st.lists(st.sampled_from(["share.decision", "message.", "retention.", "x"]), min_size=1, unique=True).map(tuple),
    counterpart=st.none() | st.sampled_from([*NODES, "amh"]),
    decision=st.none() | st.sampled_from(["not_shared", "SHARED"]),
    since=st.none() | st.integers(0, 100),
    until=st.none() | st.integers(0, 100),
    node=st.none() | st.sampled_from(NODES),
)


@settings(max_examples=200, deadline=None)
@given(log=audit_logs(), wanted=filters)
@example(  # a counterpart as JSON escapes it
    log=[AuditEntry(seq=1, ts_ms=0, event="message.sent", actor={}, counterpart='quo"te').canonical()],
    wanted=EntryFilter(counterpart='quo"te'),
)
def test_entries_found_are_exactly_those_a_full_read_finds(log: list[str], wanted: EntryFilter) -> None:
    """SQLite's narrowing never loses an entry, even when the table's side columns lie."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute(
            "CREATE TABLE audit(seq INTEGER PRIMARY KEY, ts_ms INTEGER, event TEXT, counterpart TEXT, entry TEXT)"
        )
        # The side columns are written wrong on purpose: only the entry text may decide.
        db.executemany("INSERT INTO audit VALUES (?, -1, 'forged', 'nobody', ?)", enumerate(log, start=1))
        found = list(find_entries(db, wanted))
    everything = [json.loads(entry) for entry in log]
    expected = [
        e
        for e in everything
        if (wanted.token is None or wanted.token in e["tokens"])
        and (wanted.event is None or any(e["event"].startswith(prefix) for prefix in _prefixes(wanted.event)))
        and (wanted.counterpart is None or wanted.counterpart in e["counterpart"].split(","))
        and (wanted.decision is None or wanted.decision.upper() in e["decision"].upper())
        and (wanted.since is None or e["ts_ms"] >= wanted.since)
        and (wanted.until is None or e["ts_ms"] <= wanted.until)
        and (wanted.node is None or wanted.node == e["actor"]["id"] or wanted.node in e["counterpart"].split(","))
    ]
    assert found == expected


def _prefixes(event: str | tuple[str, ...]) -> tuple[str, ...]:
    return (event,) if isinstance(event, str) else event


# What an entry may carry: text of any script, control characters, quotes and backslashes
# included; 64-bit integers (positions, times, counts); and the detail's nesting.
_texts = st.text(max_size=40)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    text=_texts,
    number=st.integers(0, 2**63 - 1),
    tokens=st.lists(_texts, max_size=3),
    detail=st.dictionaries(_texts, _values, max_size=5),
)
@example(text='quo"te \\ \n\t\x00\x1f\x7f \u2028 É 😀', number=0, tokens=[], detail={"é": 1, "e": 2, "😀": [None]})
def test_an_entrys_canonical_text_is_the_json_modules_sorted_compact_form(
    text: str, number: int, tokens: list[str], detail: dict[str, object]
) -> None:
    """`audit list` finds entries by searching their text for values as the json module
    writes them, and logs written before orjson must read alike: the text never changed."""
    entry = AuditEntry(
        seq=number,
        ts_ms=number,
        event=text,
        actor={"id": text, "name": text, "role": text},
        tokens=tokens,
        summary_id=text,
        message_id=text,
        counterpart=text,
        decision=text,
        lawful_ground=text,
        rationale=text,
        detail=detail,
    )
    fields = {name: getattr(entry, name) for name in AuditEntry.__dataclass_fields__}
    assert entry.canonical() == json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_an_export_cut_short_leaves_the_last_whole_one_and_nothing_for_others_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export is written beside its file and put in place only when every entry is in it,
    readable by its owner alone: an export stopped part way (a full disk, a Ctrl-C) never
    passes for the whole log, nor replaces the one made before it."""
    federation = make_federation(tmp_path, SystemClock(), nodes=("amh",))
    toml = str(federation.node_configs["amh"].data_dir / "node.toml")
    build(NodeConfig.load(Path(toml)).store_path, 300)
    out = tmp_path / "evidence.csv"
    args = build_parser().parse_args(["audit", "export", "--format", "csv", "--out", str(out), "--config", toml])
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        assert args.handler(args) == 0
    whole = out.read_bytes()
    assert len(whole.splitlines()) == 301 and out.stat().st_mode & 0o777 == 0o600
    flat, written = audit_cli._flat, count()

    def stopped_at_200(e: dict[str, Any]) -> dict[str, str]:
        if next(written) == 200:
            raise KeyboardInterrupt
        return flat(e)

    monkeypatch.setattr(audit_cli, "_flat", stopped_at_200)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        args.handler(args)
    assert out.read_bytes() == whole
    assert sorted(p.name for p in tmp_path.iterdir() if "evidence" in p.name) == ["evidence.csv"]
