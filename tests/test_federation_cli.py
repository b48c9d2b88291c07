"""The federation operator's commands, run as docs/operations.md writes them: the functions
behind them are tested elsewhere; these check that each command reaches its function with
what was typed, and that every bundle it writes passes `config check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage.cli.main import main
from linkage.clock import DAY_MS, SystemClock
from linkage.config import NodeConfig
from linkage.directory import read_signed
from linkage.federation import Federation
from linkage.keys import MessageKeys
from linkage.v1 import directory_pb2

ROOT = Path(__file__).resolve().parent.parent


def node_entry(directory: directory_pb2.Directory, node_id: str) -> directory_pb2.NodeEntry:
    (entry,) = [n for n in directory.nodes if n.node_id == node_id]
    return entry


def linkage(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What the command printed; it must succeed."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_the_operators_commands_build_and_change_a_federation_whose_bundles_check_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed, gw, housing, police = (str(tmp_path / n) for n in ("fed", "gw", "housing", "police"))
    linkage(capsys, "federation", "init", "--dir", fed, "--federation-id", "test.linkage.example")
    linkage(capsys, "federation", "enrol-gateway", "--dir", fed, "--out", gw, "--listen", "127.0.0.1:7443")
    for node_id, out, kind in (("housing", housing, "LA_HOUSING"), ("police", police, "POLICE")):
        said = linkage(
            capsys,
            "federation",
            "enrol",
            "--dir",
            fed,
            "--node-id",
            node_id,
            "--agency-name",
            f"Borough {node_id}",
            "--agency-type",
            kind,
            "--contact-role",
            "Duty team",
            "--out",
            out,
            "--gateway-address",
            "gateway.example:7443",
            "--jurisdiction",
            "WLS",
        )
        assert f"enrolled node {node_id}" in said
    assert "published directory version 1 with 2 nodes, valid for 7 days" in linkage(
        capsys, "federation", "publish", "--dir", fed, "--copy-to", gw, "--copy-to", housing, "--copy-to", police
    )
    for config in (f"{gw}/gateway.toml", f"{housing}/node.toml", f"{police}/node.toml"):
        assert linkage(capsys, "config", "check", config) == f"OK: {config}\n"
    entry = read_signed(Path(housing) / "directory.pb")
    listed = node_entry(directory_pb2.Directory.FromString(entry.directory), "housing")
    assert (listed.agency_name, listed.agency_type, listed.contact_role, listed.jurisdiction) == (
        "Borough housing",
        "LA_HOUSING",
        "Duty team",
        "WLS",
    )

    first_key = MessageKeys.load(NodeConfig.load(Path(housing) / "node.toml").message_keys).key_id
    rotate = ("federation", "rotate-keys", "--dir", fed, "--node-id", "housing", "--bundle", housing)
    linkage(capsys, *rotate, "--overlap-days", "3")
    rotated = MessageKeys.load(NodeConfig.load(Path(housing) / "node.toml").message_keys)
    assert rotated.key_id != first_key and [k.key_id for k in rotated.previous] == [first_key]
    assert "node police revoked" in linkage(capsys, "federation", "revoke", "--dir", fed, "--node-id", "police")
    linkage(capsys, "federation", "rotate-directory-key", "--dir", fed)
    assert "a new federation CA issues from now" in linkage(capsys, "federation", "rotate-ca", "--dir", fed)
    assert "published directory version 2" in linkage(
        capsys, "federation", "publish", "--dir", fed, "--validity-days", "3", "--copy-to", gw, "--copy-to", housing
    )
    directory = directory_pb2.Directory.FromString(read_signed(Path(gw) / "directory.pb").directory)
    statuses = {n.node_id: n.status for n in directory.nodes}
    assert statuses == {"housing": directory_pb2.NODE_STATUS_ACTIVE, "police": directory_pb2.NODE_STATUS_REVOKED}
    assert len(directory.handovers) == 1 and len(directory.tls_roots) == 2
    keys = {k.key_id: k for k in node_entry(directory, "housing").keys}
    assert set(keys) == {first_key, rotated.key_id}
    overlap_days = (keys[first_key].not_after_ms - SystemClock().now_ms()) / DAY_MS  # after the activation hour
    assert 3 < overlap_days < 3.1, overlap_days
    # The bundles still check clean: the directory key they hold hands over to the new one.
    for config in (f"{gw}/gateway.toml", f"{housing}/node.toml"):
        assert linkage(capsys, "config", "check", config) == f"OK: {config}\n"
    for bundle, cert in ((housing, "node.pem"), (gw, "gateway.pem")):
        tls = f"{bundle}/tls"
        said = linkage(
            capsys, "federation", "renew-tls", "--dir", fed, "--cert", f"{tls}/{cert}", "--ca", f"{tls}/ca.pem"
        )
        assert "renewed the certificate of" in said and f"CAs the federation trusts now (2) to {tls}/ca.pem" in said
    linkage(capsys, "federation", "publish", "--dir", fed, "--copy-to", gw, "--copy-to", housing)
    for config in (f"{gw}/gateway.toml", f"{housing}/node.toml"):  # each renewed certificate chains to the old CA
        assert linkage(capsys, "config", "check", config) == f"OK: {config}\n"
    assert "retired 1 CA" in linkage(capsys, "federation", "rotate-ca", "--dir", fed, "--retire")
    assert Federation.open(Path(fed)).federation_id == "test.linkage.example"


def test_bootstrap_builds_the_compose_federation_from_its_spec_and_running_it_again_changes_nothing_but_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out = str(ROOT / "deploy" / "compose" / "federation.toml"), tmp_path / "out"
    said = linkage(capsys, "federation", "bootstrap", "--spec", spec, "--out", str(out))
    assert said == f"federation compose.linkage.example: gateway and 3 node bundles in {out}\n"
    bundles = sorted(p.name for p in out.iterdir())
    assert bundles == ["amh", "csc", "federation", "gateway", "school"]
    key = (out / "csc" / "keys" / "signing.key").read_bytes()
    linkage(capsys, "federation", "bootstrap", "--spec", spec, "--out", str(out))
    assert (out / "csc" / "keys" / "signing.key").read_bytes() == key
    for bundle in ("gateway/gateway.toml", "csc/node.toml", "amh/node.toml", "school/node.toml"):
        assert linkage(capsys, "config", "check", str(out / bundle)) == f"OK: {out / bundle}\n"
