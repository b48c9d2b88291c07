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
        """The spec in `path`; FederationError naming every problem in it, as `config check` does."""
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FederationError(f"{path}: not a TOML spec file: {exc}") from None
        problems: list[str] = []
        top = _Table(data, "", _TOP, problems)
        gateway = _Table(data.get("gateway", {}), "[gateway] ", _GATEWAY, problems)
        listed = data.get("node", [])
        if not isinstance(listed, list) or not all(isinstance(n, dict) for n in listed):
            problems.append("node: each agency is a [[node]] table")
            listed = []
        elif not listed:
            problems.append("a federation needs at least one [[node]]")
        nodes = []
        for n, entry in enumerate(listed, start=1):
            node = _Table(entry, f"[[node]] {n}: ", _NODE, problems)
            nodes.append(
                NodeSpec(
                    node.text("id"),
                    node.text("agency_name"),
                    node.text("agency_type"),
                    node.text("contact_role", ""),
                    node.text("jurisdiction", DEFAULT),
                )
            )
        validity_days = data.get("validity_days", 7)
        if not isinstance(validity_days, int) or isinstance(validity_days, bool) or validity_days < 1:
            problems.append("validity_days: must be a whole number of days, 1 or more")
        spec = cls(
            federation_id=top.text("federation_id"),
            suite=top.text("suite", "classic"),
            gateway_id=gateway.text("id", "gateway"),
            gateway_listen=gateway.text("listen", "0.0.0.0:7443"),
            gateway_address=gateway.text("address", "gateway:7443"),
            validity_days=validity_days if isinstance(validity_days, int) else 7,
            nodes=nodes,
        )
        if problems:
            raise FederationError("\n".join(f"{path}: {problem}" for problem in problems))
        return spec


# Each table's settings: True for those that must be given.
_TOP = {"federation_id": True, "suite": False, "validity_days": False, "gateway": False, "node": False}
_GATEWAY = {"id": False, "listen": False, "address": False}
_NODE = {"id": True, "agency_name": True, "agency_type": True, "contact_role": False, "jurisdiction": False}


class _Table:
    """One table of the spec, its problems gathered into `problems`: a required setting left
    out, one this release does not know (a typo), text where text goes."""

    def __init__(self, values: object, where: str, known: dict[str, bool], problems: list[str]) -> None:
        self.values = values if isinstance(values, dict) else {}
        self.where, self.problems = where, problems
        if not isinstance(values, dict):
            problems.append(f"{where or 'the file'}: must be a table")
        for key in self.values:
            if key not in known:
                problems.append(f"{where}unknown setting {key!r} (known here: {', '.join(sorted(known))})")
        for key, required in known.items():
            if required and key not in self.values:
                problems.append(f"{where}{key} is required")

    def text(self, key: str, default: str = "") -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str):
            self.problems.append(f"{self.where}{key}: must be text, got {type(value).__name__}")
            return default
        return value


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
