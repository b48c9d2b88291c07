"""`linkage directory`: the federation's members as the signed directory says, and a warning
before the directory, a node's own keys or its TLS certificate lapse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from linkage.cli.directory_listing import DAY_MS, listing
from linkage.clock import SystemClock
from linkage.federation import publish_directory, renew_certificate, revoke_node, rotate_ca, rotate_directory_key
from linkage.keys import load_ed25519, raw_public
from tests.harness import make_federation


def test_members_with_their_law_and_status_and_warnings_before_anything_lapses(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh", "csc", "school"), jurisdictions={"csc": "WLS"})
    revoke_node(federation.fed, "school")
    now = SystemClock().now_ms()
    config = federation.node_configs["amh"]
    publish_directory(federation.fed, now, validity_days=1, copy_to=(config.data_dir,))

    shown = subprocess.run(
        [sys.executable, "-m", "linkage", "directory", "--config", str(config.data_dir / "node.toml"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(shown.stdout)
    assert found["version"] == 2 and found["gateways"] == [{"gateway_id": "gateway", "witness": True}]
    assert [(n["node_id"], n["jurisdiction"], n["status"]) for n in found["nodes"]] == [
        ("amh", "ENG", "active"),
        ("csc", "WLS", "active"),
        ("school", "ENG", "revoked"),
    ]
    assert [k["key_id"] for k in found["nodes"][0]["keys"]] == ["amh-k1"]
    assert found["bytes"] == len((config.data_dir / "directory.pb").read_bytes())
    (renew,) = found["warnings"]  # published for one day: renew it
    assert renew.startswith("the directory expires at ") and "linkage federation publish" in renew

    later = listing(config, now + 340 * DAY_MS)  # a year on from enrolment, less a month
    assert later["warnings"][0].startswith("the directory expired at ")
    assert later["warnings"][1].startswith("this node's message keys lapse in 2")
    assert "linkage federation rotate-keys" in later["warnings"][1]
    text = subprocess.run(
        [sys.executable, "-m", "linkage", "directory", "--config", str(config.data_dir / "node.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "3 agencies (2 active):" in text and "Warning: the directory expires at " in text
    assert f"{found['bytes'] / 1024:,.1f} KiB signed" in text


def test_a_directory_nearing_what_nodes_take_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh",))
    config = federation.node_configs["amh"]
    size = len((config.data_dir / "directory.pb").read_bytes())
    monkeypatch.setattr("linkage.cli.directory_listing.DIRECTORY_MAX_BYTES", 2 * size - 1)
    (warning,) = listing(config, SystemClock().now_ms())["warnings"]
    assert warning.startswith("the directory is 0.0 MiB, and nodes take at most 0 MiB from the gateway")
    monkeypatch.setattr("linkage.cli.directory_listing.DIRECTORY_MAX_BYTES", 2 * size)
    assert listing(config, SystemClock().now_ms())["warnings"] == []


def test_the_own_tls_certificate_is_warned_of_before_it_lapses_and_while_no_directory_pins_it(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh",))
    config = federation.node_configs["amh"]
    now = SystemClock().now_ms()
    assert listing(config, now)["tls_certificate"]["pinned"] and listing(config, now)["warnings"] == []

    soon = listing(config, now + 70 * DAY_MS)  # a certificate lasts 90 days
    assert soon["tls_certificate"]["lapses_in_days"] == pytest.approx(20, abs=0.1)
    assert any(f"renew it (linkage federation renew-tls --cert {config.tls.cert})" in w for w in soon["warnings"])

    renew_certificate(federation.fed, config.tls.cert, now)  # in place, the directory not yet published
    waiting = listing(config, now)
    assert not waiting["tls_certificate"]["pinned"]
    assert any("publish the directory its renewal made" in w for w in waiting["warnings"])
    publish_directory(federation.fed, now, copy_to=(config.data_dir,))
    assert listing(config, now)["tls_certificate"]["pinned"]


def test_the_directory_key_and_its_handovers_are_shown(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh",))
    config = federation.node_configs["amh"]
    first = listing(config, SystemClock().now_ms())
    assert (
        first["handovers"] == []
        and first["signing_key"] == raw_public(load_ed25519(federation.fed.root / "directory.key")).hex()
    )
    new = rotate_directory_key(federation.fed, SystemClock().now_ms())
    publish_directory(federation.fed, SystemClock().now_ms(), copy_to=(config.data_dir,))
    shown = listing(config, SystemClock().now_ms())  # the bundle still holds the first key: read, never written
    assert shown["signing_key"] == new.hex()
    assert [(h["from_key"], h["to_key"]) for h in shown["handovers"]] == [(first["signing_key"], new.hex())]
    assert config.federation.directory_public_key.read_bytes() != (federation.fed.root / "directory.pub").read_bytes()


def test_the_federation_cas_and_a_rotation_of_them_are_shown_with_a_warning_a_year_before_one_lapses(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, SystemClock(), ("amh",))
    config, now = federation.node_configs["amh"], SystemClock().now_ms()
    (first,) = listing(config, now)["tls_roots"]
    assert first["lapses_in_days"] > 3600 and not any("federation CA" in w for w in listing(config, now)["warnings"])
    in_nine_and_a_half_years = now + int(9.5 * 365 * DAY_MS)
    assert any(
        w.startswith(f"the federation CA {first['name']} lapses") and "rotate-ca" in w
        for w in listing(config, in_nine_and_a_half_years)["warnings"]
    )
    rotate_ca(federation.fed, now)
    publish_directory(federation.fed, now, copy_to=(config.data_dir,))
    assert [r["name"] for r in listing(config, now)["tls_roots"]] == [first["name"], f"{first['name']} #2"]
