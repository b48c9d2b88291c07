"""`linkage directory`: who is in the federation, as the signed directory a node or the
gateway holds says (its signature checked): each agency with its type, jurisdiction,
status, contact and message keys, and when the directory, this node's keys and this
process's TLS certificate lapse, with what to do before they do."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from linkage.cli.audit_entries import federation_directory
from linkage.clock import utc_second
from linkage.config import GatewayConfig, NodeConfig
from linkage.jurisdictions import of_node
from linkage.pki import certificate_facts, fingerprint
from linkage.renewal import RENEW_WITHIN_DAYS as CERTIFICATE_WITHIN_DAYS
from linkage.transport import DIRECTORY_MAX_BYTES
from linkage.v1 import directory_pb2

DAY_MS = 86_400_000
RENEW_WITHIN_DAYS = 2  # a weekly publishing job that has not run
ROTATE_WITHIN_DAYS = 30
CA_ROTATE_WITHIN_DAYS = 365  # of its ten years: time to renew every member's certificate under a new one


def _days(ms: int) -> float:
    return round(ms / DAY_MS, 1)


def listing(config: NodeConfig | GatewayConfig, now_ms: int) -> dict[str, Any]:
    view = federation_directory(config)
    d = view.directory
    nodes: list[dict[str, Any]] = [
        {
            "node_id": n.node_id,
            "agency_name": n.agency_name,
            "agency_type": n.agency_type,
            "jurisdiction": of_node(n),
            "status": directory_pb2.NodeStatus.Name(n.status).removeprefix("NODE_STATUS_").lower(),
            "contact_role": n.contact_role,
            "keys": [
                {
                    "key_id": k.key_id,
                    "valid_from": utc_second(k.not_before_ms),
                    "valid_until": utc_second(k.not_after_ms),
                }
                for k in n.keys
            ],
            "keys_lapse_in_days": _days(view.keys_expire_at_ms(n.node_id) - now_ms),
        }
        for n in sorted(d.nodes, key=lambda n: n.node_id)
    ]
    warnings = []
    if (left := d.expires_at_ms - now_ms) < RENEW_WITHIN_DAYS * DAY_MS:
        warnings.append(
            f"the directory {'expired' if left <= 0 else 'expires'} at {utc_second(d.expires_at_ms)}: "
            "publish a fresh one (linkage federation publish) and copy it to the gateway"
        )
    size = len(view.signed.SerializeToString())
    if size > DIRECTORY_MAX_BYTES // 2:
        warnings.append(
            f"the directory is {size / 2**20:.1f} MiB, and nodes take at most {DIRECTORY_MAX_BYTES // 2**20} MiB "
            "from the gateway: raise DIRECTORY_MAX_BYTES (linkage/transport.py) before it grows that far"
        )
    own = config.node_id if isinstance(config, NodeConfig) else None
    me = next((n for n in nodes if n["node_id"] == own), None)
    if me is not None and me["status"] == "active" and me["keys_lapse_in_days"] < ROTATE_WITHIN_DAYS:
        warnings.append(
            f"this node's message keys lapse in {me['keys_lapse_in_days']} days: have the federation operator "
            "rotate them (linkage federation rotate-keys) and publish"
        )
    certificate, problems = _own_certificate(config, view.nodes, now_ms)
    warnings += problems
    roots = [_root(r, now_ms) for r in d.tls_roots]
    for root in roots:
        if root["lapses_in_days"] < CA_ROTATE_WITHIN_DAYS:
            warnings.append(
                f"the federation CA {root['name']} lapses at {root['lapses']}: rotate it (linkage federation "
                "rotate-ca), renew every certificate, and retire it"
            )
    return {
        "federation_id": d.federation_id,
        "version": d.version,
        "issued": utc_second(d.issued_at_ms),
        "expires": utc_second(d.expires_at_ms),
        "expires_in_days": _days(d.expires_at_ms - now_ms),
        "suite": directory_pb2.HpkeSuite.Name(d.suite).removeprefix("HPKE_SUITE_"),
        "bytes": size,
        "gateways": [{"gateway_id": g.gateway_id, "witness": bool(g.witness_public_key)} for g in d.gateways],
        "signing_key": view.signer.hex(),
        "handovers": [_handover(h) for h in d.handovers],  # of the directory key, oldest first
        "tls_roots": roots,  # two while a rotation of the CA runs
        "nodes": nodes,
        "tls_certificate": certificate,
        "warnings": warnings,
    }


def _root(der: bytes, now_ms: int) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    lapses_ms = int(cert.not_valid_after_utc.timestamp() * 1000)
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "name": str(name[0].value) if name else cert.subject.rfc4514_string(),
        "fingerprint": fingerprint(cert).hex(),
        "lapses": utc_second(lapses_ms),
        "lapses_in_days": _days(lapses_ms - now_ms),
    }


def _handover(signed: directory_pb2.SignedHandover) -> dict[str, str]:
    step = directory_pb2.KeyHandover.FromString(signed.handover)
    return {"from_key": step.from_key.hex(), "to_key": step.to_key.hex(), "at": utc_second(step.at_ms)}


def _own_certificate(
    config: NodeConfig | GatewayConfig, entries: dict[str, directory_pb2.NodeEntry], now_ms: int
) -> tuple[dict[str, Any], list[str]]:
    """This process's TLS certificate file: when it lapses, whether the directory pins it
    (a node's), and what to do about either."""
    fingerprint, lapses_ms = certificate_facts(config.tls.cert.read_bytes())
    found: dict[str, Any] = {
        "file": str(config.tls.cert),
        "lapses": utc_second(lapses_ms),
        "lapses_in_days": _days(lapses_ms - now_ms),
    }
    problems = []
    if lapses_ms - now_ms < CERTIFICATE_WITHIN_DAYS * DAY_MS:
        problems.append(
            f"the TLS certificate {config.tls.cert} {'lapsed' if lapses_ms <= now_ms else 'lapses'} at "
            f"{utc_second(lapses_ms)}: renew it (linkage federation renew-tls --cert {config.tls.cert}) and publish"
        )
    if isinstance(config, NodeConfig) and (entry := entries.get(config.node_id)) is not None:
        found["pinned"] = fingerprint in (entry.tls_cert_sha256, entry.previous_tls_cert_sha256)
        if not found["pinned"]:
            problems.append(
                f"the directory does not pin the TLS certificate {config.tls.cert}, so the gateway refuses it: "
                "publish the directory its renewal made (linkage federation publish)"
            )
    return found, problems


def show(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config) if args.config else GatewayConfig.load(args.gateway_config)
    found = listing(config, int(dt.datetime.now(dt.UTC).timestamp() * 1000))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(
        f"Directory version {found['version']} of {found['federation_id']}: issued {found['issued']}, expires "
        f"{found['expires']} (in {found['expires_in_days']} days); suite {found['suite']}; "
        f"{found['bytes'] / 1024:,.1f} KiB signed"
    )
    print(f"Signed by the directory key {found['signing_key']}")
    if found["handovers"]:
        print("Handovers of the directory key, each signed by the key it retired (oldest first):")
    for h in found["handovers"]:
        print(f"  {h['at']}: {h['from_key'][:16]}... to {h['to_key'][:16]}...")
    if len(found["tls_roots"]) > 1:
        print("A rotation of the federation CA is under way: members trust both CAs until the old one is retired")
    for root in found["tls_roots"]:
        print(f"Federation CA {root['name']} ({root['fingerprint'][:16]}...), lapses {root['lapses']}")
    for g in found["gateways"]:
        print(f"Gateway {g['gateway_id']}{', witness key named' if g['witness'] else ', no witness key'}")
    active = sum(n["status"] == "active" for n in found["nodes"])
    print(f"{len(found['nodes'])} agencies ({active} active):")
    for n in found["nodes"]:
        print(
            f"  {n['node_id']:<10} {n['agency_name']:<30} {n['agency_type']:<26} {n['jurisdiction']}  {n['status']}"
            f"{'  contact: ' + n['contact_role'] if n['contact_role'] else ''}"
        )
        for k in n["keys"]:
            print(f"             key {k['key_id']}: {k['valid_from']} to {k['valid_until']}")
    c = found["tls_certificate"]
    print(f"TLS certificate {c['file']}: lapses {c['lapses']} (in {c['lapses_in_days']} days)")
    for warning in found["warnings"]:
        print(f"Warning: {warning}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("directory", help="who is in the federation, and when the directory and keys lapse")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="a node's node.toml")
    where.add_argument("--gateway-config", type=Path, help="the gateway's gateway.toml")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=show)
