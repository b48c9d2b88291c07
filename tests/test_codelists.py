"""Code lists are versioned data a federation extends without editing ours."""

from __future__ import annotations

from pathlib import Path

from linkage.codelists import CodeLists
from linkage.config import PolicyFiles
from node.policy_files import load_policy
from tests.policy_fixtures import request, run


def test_packaged_lists_cover_the_domain_reference() -> None:
    codes = CodeLists.load()
    assert codes.version == "2026.12.7"
    for name, code in [
        ("agency_type", "VCS_OLDER_PEOPLE"),
        ("risk_category", "SELF_NEGLECT"),
        ("change_direction", "DECREASED"),
        ("dpa_condition", "SCH1_P18"),
        ("override_ground", "RISK_TO_OTHERS"),
        ("forum", "MARAC"),
        ("risk_scale", "DASH_RIC"),
        ("challenge_subject", "IDENTITY_MATCH"),  # a recipient disputes a wrong link (mission anchors §8, 11)
    ]:
        assert codes.has(name, code), (name, code)
    assert "HOARDING" in codes.entry("risk_category", "SELF_NEGLECT")["sub"]
    stages = ["PRACTITIONER", "LINE_MANAGER", "SENIOR_MANAGER", "SAFEGUARDING_PARTNERSHIP"]
    assert sorted(codes.codes("escalation_stage"), key=lambda c: codes.entry("escalation_stage", c)["rank"]) == stages


def test_a_federation_extends_the_lists_with_its_own_file(tmp_path: Path) -> None:
    extra = tmp_path / "local.toml"
    extra.write_text(
        'version = "solihull-1"\n\n[[risk_category]]\ncode = "COST_OF_LIVING_CRISIS"\n'
        'applies = ["ADULT"]\ndata_categories = ["FINANCIAL"]\n'
    )
    context = load_policy(PolicyFiles(codelists_extra=(extra,)))
    assert context.codes.version == "2026.12.7+solihull-1"
    assert context.codes.has("risk_category", "COST_OF_LIVING_CRISIS")
    assert context.codes.has("risk_category", "NEGLECT")  # nothing removed

    req = request()
    req.assessment.risk_items[0].category = "COST_OF_LIVING_CRISIS"
    req.assessment.risk_items[0].subcategory = ""
    assert "unknown_code" in {f.code for f in run(req).findings}
    result = run(req, context)
    assert "unknown_code" not in {f.code for f in result.findings}
    assert result.decision.codelists_version == "2026.12.7+solihull-1"
    assert result.decision.recipients[0].data_categories == ["FINANCIAL", "HEALTH"]


def test_a_lists_digest_follows_what_it_holds_whatever_its_version_says(tmp_path: Path) -> None:
    """A node derives its chronology again when the identity-basis list's digest changes: a
    code added, or one counted as verified, changes it, with or without a new version; a
    change to another list does not; a TOML date in an entry is no obstacle."""
    packaged = CodeLists.load()
    digest = packaged.digest("identity_basis")
    extra = tmp_path / "extra.toml"
    changes = {
        'version = "x"\n[[identity_basis]]\ncode = "LOCAL_INDEX"\nlabel = "Local index"\n': True,
        'version = "?"\n[[identity_basis]]\ncode = "STATED"\nverified = true\n': True,
        'version = "x"\n[[identity_basis]]\ncode = "STATED"\nreviewed = 2026-11-01\n': True,
        'version = "x"\n[[challenge_subject]]\ncode = "OTHER_LOCAL"\nlabel = "Local"\n': False,
    }
    for text, changed in changes.items():
        extra.write_text(text)
        assert (CodeLists.load([extra]).digest("identity_basis") != digest) == changed, text
    assert CodeLists.load().digest("identity_basis") == digest
