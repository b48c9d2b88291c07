"""`linkage demo` end to end: separate processes, the Think-Family story, a clean exit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from linkage import stories


def test_demo_tells_the_story_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkage", "demo", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Recipients, found by family link at the gateway: Children's Social Care, Oak Primary School" in out
    assert out.count("delivered (message") == 2
    assert "CURRENT    PARENTAL_CAPACITY/PARENTAL_MH, increased" in out
    assert "HISTORICAL SUBSTANCE_MISUSE/ALCOHOL" in out
    assert "County Police received nothing" in out
    assert "withheld: risk item 2 (SUBSTANCE_MISUSE): relevance to SCHOOL not stated" in out
    assert "Decision: SHARED_PARTIAL" in out
    # Seed 003: a professional challenge, on the duty view, maintained, escalated, accepted.
    assert "At the PRACTITIONER stage: The school reports the child is often alone" in out
    assert "[8] Adult mental health's duty view (`linkage due`) lists it, to answer by " in out
    assert "Adult mental health maintained it: " in out and "at the LINE_MANAGER stage" in out
    assert "Adult mental health accepted it: " in out
    # Another patient's history in the summary: erased at both recipients, confirmed by their receipts.
    assert "[9] Adult mental health finds the alcohol history is another patient's" in out
    assert "    Children's Social Care     erased it (withdrawal delivered, receipt signed)\n" in out
    assert "    Oak Primary School         erased it (withdrawal delivered, receipt signed)\n" in out
    assert "is a personal data breach for IG to assess" in out
    assert "A corrected summary, without it, is delivered to Children's Social Care, Oak Primary School." in out
    assert "the first assessment withdrawn, never to be shared again; the correction current.\n" in out
    with closing(sqlite3.connect(tmp_path / "demo" / "csc" / "store.sqlite")) as csc:
        assert csc.execute("SELECT state, COUNT(*) FROM inbox WHERE kind = 1 GROUP BY state").fetchall() == [
            ("erased", 1),
            ("new", 1),
        ]
    # Story 2 (seed 004): discovery, sharing, clarification and a closure held by an objection.
    assert "Age UK Solihull (VCS_OLDER_PEOPLE) - contact the Information and advice team" in out
    assert "County Fire and Rescue is told: County Police has joined" in out
    assert "Age UK learns its summary was read by adult social care's Social worker." in out
    assert "A: Every Tuesday" in out
    assert "withheld from County Fire and Rescue: risk item 1 (FINANCIAL_MATERIAL_ABUSE): not within" in out
    assert "how it may use the police's summary (DPA 2018 Part 3, SCH8_P4): POLICE_HANDLING_C" in out
    # Age UK leaves the police out, saying why; the police recall their summary from Age UK alone.
    assert "Age UK Solihull -> Adult Social Care, County Fire and Rescue: " in out
    assert "withheld from County Police: left out by the practitioner: Ms B agreed to adult social care" in out
    assert "They recall it from Age UK alone, as SHARED_IN_ERROR:\n" in out
    assert "    Age UK Solihull            erased it (withdrawal delivered, receipt signed)\n" in out
    assert "Adult Social Care keeps it; the police's IG officer is told to assess the breach." in out
    police_summary = "SELECT state FROM inbox WHERE kind = 1 AND sender = 'police'"
    with closing(sqlite3.connect(tmp_path / "demo" / "ageuk" / "store.sqlite")) as ageuk:
        assert ageuk.execute(police_summary).fetchall() == [("erased",)]
    with closing(sqlite3.connect(tmp_path / "demo" / "asc" / "store.sqlite")) as asc:
        ((kept,),) = asc.execute(police_summary).fetchall()
        assert kept != "erased"
    assert "County Fire and Rescue objects: The smoke alarms are not fitted yet" in out
    assert "Closing now is refused" in out
    assert "Stopped 8 processes (exit codes [0])" in out
    # The IG officer's check, against the checkpoint the witness cosigned as csc stopped.
    verified = out.split("[18]", 1)[1]
    assert "was cosigned by the witness, gateway gateway" in verified and "\n    OK: " in verified, verified
    kept_hint = f"    linkage audit verify --config {tmp_path / 'demo' / 'csc' / 'node.toml'}\n"
    assert kept_hint in out  # the paths it showed are still there to try
    register = ["audit", "register", "--config", str(tmp_path / "demo" / "asc" / "node.toml")]
    assert f"    linkage {' '.join(register)}\n" in out
    shown = subprocess.run([sys.executable, "-m", "linkage", *register], capture_output=True, text=True, check=True)
    assert "Summaries received: 3\n" in shown.stdout and "    from Age UK Solihull: " in shown.stdout
    report = ["audit", "report", "--person", f"nhs:{stories.MS_B_NHS}", *register[2:]]
    answered = subprocess.run([sys.executable, "-m", "linkage", *report], capture_output=True, text=True, check=True)
    # The police's item travels with the exemptions whoever answers her subject access request should consider.
    assert "[exemptions to consider: item 1 SCH2_P1_PARA2_CRIME, SCH2_P3_THIRD_PARTY]" in answered.stdout
    gateway_toml = tmp_path / "demo" / "gateway" / "gateway.toml"
    assert f"LINKAGE_GATEWAY_LISTEN=127.0.0.1:7700 linkage gateway serve --config {gateway_toml}\n" in out
    assert "LINKAGE_GATEWAY_ADDRESS=127.0.0.1:7700 linkage node serve --config" in out
    for node in ("amh", "csc", "school", "police", "fire", "ageuk", "asc"):
        assert (tmp_path / "demo" / node / "store.sqlite").exists()
    gateway_log = (tmp_path / "demo" / "gateway" / "gateway.log").read_text()
    assert "connect" in {json.loads(line)["event"] for line in gateway_log.splitlines()}
    assert "Low mood" not in gateway_log  # narrative travels sealed, never in the gateway's log
    assert "prescribed medication" not in gateway_log


def test_demo_without_keep_removes_its_temporary_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkage", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (working,) = [line for line in result.stdout.splitlines() if line.startswith("Working folder: ")]
    assert str(tmp_path) in working and "removed at the end; --keep DIR keeps one" in working
    assert "\n    OK: " in result.stdout  # the stores were still there for the IG officer's check
    assert "`linkage demo --keep DIR` keeps the stores and logs" in result.stdout  # not told to try removed paths
    assert list(tmp_path.iterdir()) == []
