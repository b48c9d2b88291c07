"""`linkage federation bootstrap`: a whole federation from one spec file, for a
container deployment's one-shot init service (and for trying Linkage out).

The spec names the federation, the gateway and each node; the output folder gets
one bundle per service (keys, certificate, configuration, directory) and the
federation folder itself, which should then be moved off-line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from linkage.federation import (
    Federation,
    FederationError,
    enrol_gateway,
    enrol_node,
    init_federation,
    publish_directory,
)
from linkage.jurisdictions import DEFAULT


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    agency_name: str
    agency_type: str
    contact_role: str
    jurisdiction: str


@dataclass(frozen=True)
class FederationSpec:
    federation_id: str
    suite: str
    gateway_id: str
    gateway_listen: str
    gateway_address: str
    validity_days: int
    nodes: list[NodeSpec]

    @classmethod
    def load(cls, path: Path) -> FederationSpec:
        data = tomllib.loads(path.read_text())
        gateway = data.get("gateway", {})
        nodes = [
            NodeSpec(
                n["id"], n["agency_name"], n["agency_type"], n.get("contact_role", ""), n.get("jurisdiction", DEFAULT)
            )
            for n in data.get("node", [])
        ]
        if not nodes:
            raise FederationError(f"{path}: a federation needs at least one [[node]]")
        return cls(
            federation_id=data["federation_id"],
            suite=data.get("suite", "classic"),
            gateway_id=gateway.get("id", "gateway"),
            gateway_listen=gateway.get("listen", "0.0.0.0:7443"),
            gateway_address=gateway.get("address", "gateway:7443"),
            validity_days=int(data.get("validity_days", 7)),
            nodes=nodes,
        )


def bootstrap(spec: FederationSpec, out: Path, now_ms: int) -> Federation:
    """Create everything under `out`: federation/, <gateway_id>/, and one folder per node.

    Run again on a folder that already holds the federation, it only re-publishes
    the directory (so restarting the init service is harmless)."""
    fed_dir = out / "federation"
    if (fed_dir / "federation.json").exists():
        fed = Federation.open(fed_dir)
    else:
        fed = init_federation(fed_dir, spec.federation_id, now_ms, spec.suite)
        enrol_gateway(fed, spec.gateway_id, out / spec.gateway_id, spec.gateway_listen, now_ms)
        for node in spec.nodes:
            enrol_node(
                fed,
                node.node_id,
                node.agency_name,
                node.agency_type,
                out / node.node_id,
                spec.gateway_address,
                now_ms,
                contact_role=node.contact_role,
                gateway_name=spec.gateway_id,
                jurisdiction=node.jurisdiction,
            )
    bundles = (out / spec.gateway_id, *(out / n.node_id for n in spec.nodes))
    publish_directory(fed, now_ms, spec.validity_days, copy_to=bundles)
    return fed
