"""deploy/compose: valid against the Compose Specification, and wired together right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from linkage.bootstrap import FederationSpec, bootstrap
from linkage.clock import SystemClock
from linkage.config import GatewayConfig, NodeConfig
from linkage.federation import FederationError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def test_compose_file_is_valid_against_the_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    # The specification declares draft 07 by an address jsonschema does not recognise
    # (https, no fragment), so the draft is named here rather than guessed as the latest.
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(load())


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (volume name or host path)."""
    out = {}
    for mount in service.get("volumes", []):
        source, target = mount.split(":")[:2]
        out[target] = source
    return out


def test_wiring_nodes_gateway_volumes_certificates_and_ports(tmp_path: Path) -> None:
    compose = load()
    services = compose["services"]
    spec = FederationSpec.load(COMPOSE / "federation.toml")
    nodes = [n.node_id for n in spec.nodes]
    assert len(nodes) >= 3
    assert spec.gateway_id in services and spec.gateway_address.split(":")[0] == spec.gateway_id

    # The init service writes each bundle into the named volume its service mounts at /data.
    init = services["federation-init"]
    init_mounts = _mounts(init)
    for name in (spec.gateway_id, *nodes):
        volume = _mounts(services[name])["/data"]
        assert volume in compose["volumes"], f"{name}: volume {volume} is not declared"
        assert init_mounts[f"/out/{name}"] == volume, f"{name}: init writes elsewhere"
        assert services[name]["depends_on"], f"{name} must wait for what it needs"
    assert all(source in compose["volumes"] for source in init_mounts.values() if not source.startswith("."))

    # Every node reaches the gateway by its service name, and checks health with the gRPC service.
    for node in nodes:
        assert services[node]["environment"]["LINKAGE_GATEWAY_ADDRESS"] == spec.gateway_address
        assert services[node]["healthcheck"]["test"][1:3] == ["linkage", "health"]
    assert services[spec.gateway_id]["healthcheck"]["test"][1:3] == ["linkage", "health"]

    # No two services publish the same host port.
    published = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))

    # Run the init step for real: every path each service's configuration names exists.
    bootstrap(spec, tmp_path, SystemClock().now_ms())
    gateway = GatewayConfig.load(tmp_path / spec.gateway_id / "gateway.toml")
    for path in (
        gateway.tls.cert,
        gateway.tls.key,
        gateway.tls.ca,
        gateway.federation.directory,
        gateway.federation.directory_public_key,
    ):
        assert path.exists(), path
    for node in nodes:
        config = NodeConfig.load(tmp_path / node / "node.toml")
        for path in (
            config.tls.cert,
            config.tls.key,
            config.tls.ca,
            config.federation.directory,
            config.federation.directory_public_key,
            config.linkage_key,
            config.message_keys / "signing.key",
        ):
            assert path.exists(), path
    # And no secret is baked into the image: the Dockerfile copies code only.
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "USER linkage" in dockerfile and "build-essential" in dockerfile.split("FROM python:3.11-slim\n")[0]
    assert not any(word in dockerfile for word in (".key", ".seed", "linkage.key", "federation/"))


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ('suite = "classic"\n[[node]]\nid = "csc"\n', ["federation_id is required", "[[node]] 1: agency_name is"]),
        (
            'federation_id = "x.example"\nvalidity_days = "7"\n[gateway]\nlisten = 7443\n[[node]]\nid = "csc"\n'
            'agency_nam = "CSC"\nagency_type = "LA_CHILDRENS_SOCIAL_CARE"\n',
            [
                "[[node]] 1: unknown setting 'agency_nam' (known here: agency_name, agency_type, contact_role, id, "
                "jurisdiction)",
                "[[node]] 1: agency_name is required",
                "validity_days: must be a whole number of days, 1 or more",
                "[gateway] listen: must be text, got int",
            ],
        ),
        ('federation_id = "x.example"\n[node]\nid = "csc"\n', ["node: each agency is a [[node]] table"]),
        ('federation_id = "x.example"\n', ["a federation needs at least one [[node]]"]),
        ("federation_id = \n", ["not a TOML spec file"]),
    ],
)
def test_a_spec_that_is_not_what_bootstrap_takes_is_refused_naming_every_problem(
    tmp_path: Path, spec: str, said: list[str]
) -> None:
    """A node's own node.toml given as the spec, a typo, a number in quotes: each was a traceback."""
    path = tmp_path / "federation.toml"
    path.write_text(spec)
    with pytest.raises(FederationError) as raised:
        FederationSpec.load(path)
    lines = str(raised.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    for expected in said:
        assert any(expected in line for line in lines), (expected, lines)
    assert not (tmp_path / "out").exists()
