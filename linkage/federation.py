"""Offline federation tooling: create a federation, enrol nodes and gateways,
publish the signed directory (the `linkage federation ...` commands).

The federation folder holds the CA, the directory signing key and the linkage
key; keep it off-line. Enrolment writes a self-contained bundle per node or
gateway (keys, certificate, configuration) to hand to the agency's IT team.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from linkage import jurisdictions
from linkage.codelists import CodeLists
from linkage.configcheck import is_address
from linkage.directory import sign_directory, sign_handover
from linkage.files import fsync_dir, write_atomic, write_private
from linkage.ids import is_node_id
from linkage.keys import (
    MessageKeys,
    finish_rotation,
    load_ed25519,
    public_pem,
    raw_public,
    raw_public_pq,
    write_private_pem,
)
from linkage.pki import (
    CertificateAuthority,
    CertificateProblem,
    cert_fingerprint,
    chains_to,
    fingerprint,
    identities,
    parse_spiffe_id,
    spiffe_id,
)
from linkage.tokens import LinkageKey
from linkage.v1 import directory_pb2 as pb

KEY_VALIDITY_DAYS = 365
CERT_VALIDITY_DAYS = 90
ROOTS = "roots.pem"  # the CAs members trust (federation folder, and every directory)
CROSS = "ca.cross.pem"  # the issuing CA certified by the one before it, while a rotation runs
NEXT_CA = "ca.next"  # a new CA being put in place (.key, .pem)
ISSUED = "issued"  # a copy of each member's current certificate: which CA issued it


class FederationError(ValueError):
    """A federation operation that cannot be done as asked."""


SUITES = {
    "classic": pb.HPKE_SUITE_X25519_SHA256_AES128GCM,
    "hybrid": pb.HPKE_SUITE_MLKEM768X25519_SHA256_AES256GCM,  # ML-KEM-768 + X25519, ML-DSA-65 co-signature
}


@dataclass(frozen=True)
class Federation:
    root: Path
    federation_id: str
    suite: str = "classic"

    @classmethod
    def open(cls, root: Path) -> Federation:
        meta = root / "federation.json"
        if not meta.exists():
            raise FederationError(f"{root} is not a federation folder (run 'linkage federation init')")
        data = json.loads(meta.read_text())
        return cls(root=root, federation_id=data["federation_id"], suite=data.get("suite", "classic"))

    @property
    def post_quantum(self) -> bool:
        return self.suite == "hybrid"

    @property
    def entries(self) -> Path:
        return self.root / "entries"

    @property
    def directory_path(self) -> Path:
        return self.root / "directory.pb"

    def ca(self) -> CertificateAuthority:
        """The CA that issues certificates now."""
        return CertificateAuthority.load(self.root)

    def roots_pem(self) -> bytes:
        """Every CA members trust: the one that issues, and while a rotation of the CA runs,
        the one before it (a federation made before rotations has only ca.pem)."""
        roots = self.root / ROOTS
        return roots.read_bytes() if roots.exists() else (self.root / "ca.pem").read_bytes()

    def roots(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.roots_pem())

    def issued(self, kind: str, ident: str) -> Path:
        """Where the federation keeps a copy of a member's current certificate."""
        return self.root / ISSUED / f"{kind}-{ident}.pem"

    def certificate(self, leaf: bytes) -> bytes:
        """A certificate as its member sends it: after it, while a rotation of the CA runs,
        the issuing CA certified by the one before, for members that trust only that one."""
        cross = self.root / CROSS
        return leaf + (cross.read_bytes() if cross.exists() else b"")


def _now(now_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)


def init_federation(root: Path, federation_id: str, now_ms: int, suite: str = "classic") -> Federation:
    if (root / "federation.json").exists():
        raise FederationError(f"{root} already holds a federation")
    if suite not in SUITES:
        raise FederationError(f"suite must be one of {sorted(SUITES)}")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    CertificateAuthority.create(federation_id, _now(now_ms)).save(root)
    signing = ed25519.Ed25519PrivateKey.generate()
    write_private_pem(root / "directory.key", signing)
    write_atomic(
        root / "directory.pub",
        public_pem(signing.public_key()),
    )
    LinkageKey(version=1, key=os.urandom(32)).save(root / "linkage.key")
    (root / "entries").mkdir(exist_ok=True)  # a run a crash cut short may have made it
    # Last: a federation folder without it is one whose creation did not finish.
    meta = {"federation_id": federation_id, "suite": suite, "version": 0}
    write_atomic(root / "federation.json", (json.dumps(meta) + "\n").encode())
    return Federation(root=root, federation_id=federation_id, suite=suite)


def _write_tls(fed: Federation, out: Path, kind: str, ident: str, now_ms: int, server: bool) -> bytes:
    tls = out / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    dns = (ident, "localhost") if server else ()
    ips = ("127.0.0.1",) if server else ()
    key_pem, cert_pem = fed.ca().issue(
        spiffe_id(fed.federation_id, kind, ident),
        f"{kind}-{ident}",
        _now(now_ms),
        CERT_VALIDITY_DAYS,
        dns_names=dns,
        ip_addresses=ips,
        server=server,
    )
    fed.issued(kind, ident).parent.mkdir(exist_ok=True)
    write_atomic(fed.issued(kind, ident), cert_pem)
    write_private(tls / f"{kind}.key", key_pem)
    write_atomic(tls / f"{kind}.pem", fed.certificate(cert_pem))
    write_atomic(tls / "ca.pem", fed.roots_pem())
    (out / "federation").mkdir(exist_ok=True)
    write_atomic(out / "federation" / "directory.pub", (fed.root / "directory.pub").read_bytes())
    return cert_fingerprint(cert_pem)


MAX_NAME = 200  # characters in an agency name or contact role, as the directory shows them


def _check_text(what: str, text: str, required: bool = False) -> None:
    """A name that goes into the directory and a configuration file: one printable line."""
    if required and not text.strip():
        raise FederationError(f"{what} is needed: it is how other agencies see this one")
    if len(text) > MAX_NAME or not text.isprintable():
        raise FederationError(f"{what} must be one line of at most {MAX_NAME} printable characters")


def _check_empty(out: Path, renewing: str = "") -> None:
    """Enrolling writes keys and a configuration: never over another member's. A gateway
    may be enrolled again in its own folder (`renewing` its id), for a new certificate and
    witness key, keeping its store."""
    if renewing and _gateway_id(out / "gateway.toml") == renewing:
        return
    if out.exists() and any(out.iterdir()):
        raise FederationError(
            f"{out} already holds files; enrol into a new, empty folder (this would overwrite them, "
            "and a member's keys cannot be recovered)"
        )


def _gateway_id(config: Path) -> str:
    try:
        return str(tomllib.loads(config.read_text())["gateway"]["id"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return ""


def enrol_node(
    fed: Federation,
    node_id: str,
    agency_name: str,
    agency_type: str,
    out: Path,
    gateway_address: str,
    now_ms: int,
    contact_role: str = "",
    gateway_name: str = "gateway",
    jurisdiction: str = jurisdictions.DEFAULT,
) -> Path:
    """Write a node bundle to `out` and add its entry for the next directory."""
    if not is_node_id(node_id):
        raise FederationError("node id must be 1-63 lowercase letters, digits or hyphens, starting with a letter")
    codes = CodeLists.load()
    if not codes.has("agency_type", agency_type):
        raise FederationError(
            f"agency type {agency_type!r} is not in the agency_type code list; use one of: "
            + ", ".join(codes.codes("agency_type"))
        )
    if not codes.has("jurisdiction", jurisdiction):
        raise FederationError(
            f"jurisdiction {jurisdiction!r} is not in the jurisdiction code list; use one of: "
            + ", ".join(codes.codes("jurisdiction"))
        )
    if (fed.entries / f"{node_id}.pb").exists():
        raise FederationError(f"node {node_id!r} is already enrolled")
    _check_text("agency name", agency_name, required=True)
    _check_text("contact role", contact_role)
    if not is_address(gateway_address):
        raise FederationError(f"gateway address {gateway_address!r} must be host:port, e.g. gateway.example:7443")
    if not is_node_id(gateway_name):
        raise FederationError(f"gateway name {gateway_name!r} must be the gateway's id, e.g. 'gateway'")
    _check_empty(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    fingerprint = _write_tls(fed, out, "node", node_id, now_ms, server=False)
    keys = MessageKeys.generate(key_id=f"{node_id}-k1", post_quantum=fed.post_quantum)
    keys.save(out / "keys")
    write_private(out / "keys" / "linkage.key", (fed.root / "linkage.key").read_bytes())
    entry = pb.NodeEntry(
        node_id=node_id,
        agency_name=agency_name,
        agency_type=agency_type,
        tls_cert_sha256=fingerprint,
        status=pb.NODE_STATUS_ACTIVE,
        contact_role=contact_role,
        jurisdiction=jurisdiction,
        keys=[
            pb.NodeKey(
                key_id=keys.key_id,
                signing_public_key=raw_public(keys.signing),
                hpke_public_key=raw_public(keys.hpke),
                not_before_ms=now_ms - 5 * 60_000,
                not_after_ms=now_ms + KEY_VALIDITY_DAYS * 86_400_000,
                hpke_pq_public_key=raw_public_pq(keys.mlkem) if keys.mlkem else b"",
                mldsa_public_key=raw_public_pq(keys.mldsa) if keys.mldsa else b"",
            )
        ],
    )
    config = out / "node.toml"
    write_atomic(
        config,
        f"""# Linkage node "{node_id}" ({agency_name}). Paths are relative to this file.
[node]
id = "{node_id}"
data_dir = "."
log_level = "info"

[federation]
id = "{fed.federation_id}"
directory_public_key = "federation/directory.pub"
directory = "directory.pb"

[gateway]
address = "{gateway_address}"
server_name = "{gateway_name}"

[tls]
cert = "tls/node.pem"
key = "tls/node.key"
ca = "tls/ca.pem"

[keys]
message_keys = "keys"
linkage_key = "keys/linkage.key"

[api]
socket = "api.sock"
""".encode(),
    )
    # Last: the member is enrolled once its bundle is whole.
    write_atomic(fed.entries / f"{node_id}.pb", entry.SerializeToString())
    return config


def enrol_gateway(fed: Federation, gateway_id: str, out: Path, listen: str, now_ms: int) -> Path:
    if not is_node_id(gateway_id):
        raise FederationError("gateway id must be a lowercase slug such as 'gateway'")
    if not is_address(listen):
        raise FederationError(f"listen address {listen!r} must be host:port, e.g. 0.0.0.0:7443")
    _check_empty(out, renewing=gateway_id)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    fingerprint = _write_tls(fed, out, "gateway", gateway_id, now_ms, server=True)
    # The key with which it cosigns the audit checkpoints it witnesses; nodes find it in the directory.
    witness = ed25519.Ed25519PrivateKey.generate()
    (out / "keys").mkdir(exist_ok=True)
    write_private_pem(out / "keys" / "witness.key", witness)
    entry = pb.GatewayEntry(gateway_id=gateway_id, tls_cert_sha256=fingerprint, witness_public_key=raw_public(witness))
    config = out / "gateway.toml"
    write_atomic(
        config,
        f"""# Linkage gateway "{gateway_id}". Paths are relative to this file.
[gateway]
id = "{gateway_id}"
listen = "{listen}"
data_dir = "."
log_level = "info"

[federation]
id = "{fed.federation_id}"
directory_public_key = "federation/directory.pub"
directory = "directory.pb"

[tls]
cert = "tls/gateway.pem"
key = "tls/gateway.key"
ca = "tls/ca.pem"

[witness]
key = "keys/witness.key"
""".encode(),
    )
    # Last: the member is enrolled once its bundle is whole.
    write_atomic(fed.root / f"gateway-{gateway_id}.pb", entry.SerializeToString())
    return config


MAX_ACTIVATE_HOURS = 30 * 24


def rotate_keys(
    fed: Federation, node_id: str, bundle: Path, now_ms: int, overlap_days: int = 7, activate_in_hours: int = 1
) -> str:
    """A new generation of a node's message keys, with an overlap window.

    Senders start sealing to the new key `activate_in_hours` from now (time for the
    node to take it from its bundle); the old key stays valid `overlap_days` more, so messages
    created under it before then still verify, and after it they are refused. The old
    private keys move to keys/previous/ so what was sealed to them still opens. After a
    crash at any point, running it again finishes the rotation that was cut short.
    """
    path = fed.entries / f"{node_id}.pb"
    if not path.exists():
        raise FederationError(f"node {node_id!r} is not enrolled")
    if not 1 <= activate_in_hours <= MAX_ACTIVATE_HOURS:
        raise FederationError(
            f"activate the new key in 1 to {MAX_ACTIVATE_HOURS} hours: senders switch to it then, "
            "so the node must hold it by then"
        )
    if not 0 <= overlap_days <= KEY_VALIDITY_DAYS:
        raise FederationError(
            f"the old key's overlap is 0 to {KEY_VALIDITY_DAYS} days: with less, the node would have "
            "no valid key until the new one activates"
        )
    entry = pb.NodeEntry.FromString(path.read_bytes())
    keys_dir = bundle / "keys"
    newest = entry.keys[-1].key_id
    _check_bundle(keys_dir, node_id, newest)
    finish_rotation(keys_dir)  # one a crash interrupted, if any
    current = MessageKeys.load(keys_dir)
    if current.key_id == newest:
        current = MessageKeys.generate(f"{node_id}-k{len(entry.keys) + 1}", post_quantum=fed.post_quantum)
        current.stage(keys_dir)
        finish_rotation(keys_dir)
    # Else an earlier run put its new generation in place and stopped before the entry: finish that.
    activate = now_ms + activate_in_hours * 3_600_000
    for key in entry.keys:
        key.not_after_ms = min(key.not_after_ms, activate + overlap_days * 86_400_000)
    entry.keys.add(
        key_id=current.key_id,
        signing_public_key=raw_public(current.signing),
        hpke_public_key=raw_public(current.hpke),
        not_before_ms=activate,
        not_after_ms=now_ms + KEY_VALIDITY_DAYS * 86_400_000,
        hpke_pq_public_key=raw_public_pq(current.mlkem) if current.mlkem else b"",
        mldsa_public_key=raw_public_pq(current.mldsa) if current.mldsa else b"",
    )
    write_atomic(path, entry.SerializeToString())
    return current.key_id


def _check_bundle(keys_dir: Path, node_id: str, newest: str) -> None:
    """The bundle holds the node's newest key, or a rotation to it that did not finish."""
    try:
        held = (keys_dir / "key_id").read_text().strip()
    except FileNotFoundError:
        raise FederationError(f"{keys_dir.parent} holds no message keys: give {node_id}'s own bundle folder") from None
    if held != newest and not (keys_dir / "previous" / newest).is_dir():
        raise FederationError(
            f"{keys_dir.parent} holds key {held!r}, not {node_id}'s newest ({newest!r}): "
            f"give {node_id}'s own bundle folder"
        )


def renew_certificate(fed: Federation, cert_file: Path, now_ms: int, out: Path | None = None) -> tuple[str, bytes]:
    """Renew a member's TLS certificate: a new one for the same key and identity as the one
    in `cert_file`, valid CERT_VALIDITY_DAYS from now, written to `out` (by default over
    `cert_file`, whole, so a running node or gateway takes it without a restart). A node's
    entry pins the new certificate from the next directory, beside the one renewed, which
    the gateway still accepts until it lapses. The entry is written before the file: a crash
    between leaves the node with a certificate still pinned, and running it again finishes.
    Returns the member's SPIFFE id and the new certificate's fingerprint."""
    try:
        old_pem = cert_file.read_bytes()
        old_fingerprint = cert_fingerprint(old_pem)
        identity = next(iter(identities(old_pem)), "")
    except OSError as exc:
        raise FederationError(f"cannot read {cert_file}: {exc.strerror}") from None
    except ValueError:
        raise FederationError(f"{cert_file} is not a PEM certificate") from None
    member = parse_spiffe_id(identity, fed.federation_id)
    if member is None:
        raise FederationError(f"{cert_file} is not a certificate of a member of federation {fed.federation_id!r}")
    kind, ident = member
    try:
        new_pem = fed.ca().renew(old_pem, _now(now_ms), CERT_VALIDITY_DAYS, fed.roots())
    except CertificateProblem as exc:
        raise FederationError(f"{cert_file}: {exc}") from None
    fingerprint = cert_fingerprint(new_pem)
    if kind == "node":
        path = fed.entries / f"{ident}.pb"
        if not path.exists():
            raise FederationError(f"node {ident!r} is not enrolled")
        node = pb.NodeEntry.FromString(path.read_bytes())
        if node.status != pb.NODE_STATUS_ACTIVE:
            raise FederationError(f"node {ident!r} is revoked: enrol it anew instead")
        if old_fingerprint not in (node.tls_cert_sha256, node.previous_tls_cert_sha256):
            raise FederationError(
                f"{cert_file} is not the certificate the directory pins for {ident!r}: give the one it uses now"
            )
        node.previous_tls_cert_sha256, node.tls_cert_sha256 = old_fingerprint, fingerprint
        write_atomic(path, node.SerializeToString())
    else:
        path = fed.root / f"gateway-{ident}.pb"
        if not path.exists():
            raise FederationError(f"gateway {ident!r} is not enrolled")
        gateway = pb.GatewayEntry.FromString(path.read_bytes())
        gateway.tls_cert_sha256 = fingerprint  # for the record: nodes check its name and CA
        write_atomic(path, gateway.SerializeToString())
    fed.issued(kind, ident).parent.mkdir(exist_ok=True)
    write_atomic(fed.issued(kind, ident), new_pem)
    write_atomic(out or cert_file, fed.certificate(new_pem))
    return identity, fingerprint


def write_roots_file(fed: Federation, ca_file: Path) -> int:
    """Write the CAs members trust now over a member's CA file, whole; how many. A running
    member takes them from the directory itself, and adds a CA only when one it trusts
    certified it, so one away while a CA was retired (a certificate issued since carries no
    cross-certificate) trusts none the gateway's certificate chains to: this is the copy by
    hand that a retired CA, by design, cannot vouch for."""
    try:
        write_atomic(ca_file, fed.roots_pem())
    except OSError as exc:
        raise FederationError(f"cannot write {ca_file}: {exc.strerror}") from None
    return len(fed.roots())


def revoke_node(fed: Federation, node_id: str) -> None:
    """Mark a node revoked for the next published directory (its certificate and keys stop working)."""
    path = fed.entries / f"{node_id}.pb"
    if not path.exists():
        raise FederationError(f"node {node_id!r} is not enrolled")
    entry = pb.NodeEntry.FromString(path.read_bytes())
    entry.status = pb.NODE_STATUS_REVOKED
    write_atomic(path, entry.SerializeToString())


MAX_VALIDITY_DAYS = 365
NEXT_DIRECTORY_KEY = "directory.next.key"


def rotate_directory_key(fed: Federation, now_ms: int) -> bytes:
    """Replace the key that signs the directory: the old key signs a handover to a new one
    (kept in federation.json, and carried by every directory published from now, so that a
    process trusting any earlier key follows the chain), then is destroyed. Returns the new
    key's public half. A rotation cut short at any point is finished by running it again."""
    staged, current, public = fed.root / NEXT_DIRECTORY_KEY, fed.root / "directory.key", fed.root / "directory.pub"
    if not staged.exists() and public.read_bytes() == public_pem(load_ed25519(current).public_key()):
        write_private_pem(staged, ed25519.Ed25519PrivateKey.generate())  # else: only the public half is left to do
    if staged.exists():
        new = raw_public(load_ed25519(staged))
        meta_path = fed.root / "federation.json"
        meta = json.loads(meta_path.read_text())
        handovers = meta.get("directory_handovers", [])
        if not any(h.to_key == new for h in _handovers(handovers)):
            handover = sign_handover(fed.federation_id, load_ed25519(current), new, now_ms)
            meta["directory_handovers"] = [*handovers, handover.SerializeToString().hex()]
            write_atomic(meta_path, (json.dumps(meta) + "\n").encode())
        os.replace(staged, current)
        fsync_dir(fed.root)
    key = load_ed25519(current)
    write_atomic(public, public_pem(key.public_key()))
    return raw_public(key)


def _handovers(stored: list[str]) -> list[pb.KeyHandover]:
    return [pb.KeyHandover.FromString(pb.SignedHandover.FromString(bytes.fromhex(h)).handover) for h in stored]


def rotate_ca(fed: Federation, now_ms: int) -> bytes:
    """Put a new federation CA in place, for a CA near its end or one whose key may be known.
    The old CA certifies the new one (CROSS) before its key is destroyed; both are trusted
    (ROOTS, and every directory published from now) until `retire_ca`. Certificates issued
    meanwhile carry the cross-certificate, so a member that still trusts only the old CA
    accepts them. Returns the new CA certificate's fingerprint; a rotation cut short at any
    point is finished by running it again."""
    staged = fed.root / f"{NEXT_CA}.pem"
    if not staged.exists():
        if len(fed.roots()) > 1:
            raise FederationError(
                "the CA is being rotated already: once every member runs a certificate the new CA issued, "
                "retire the old one first (linkage federation rotate-ca --retire)"
            )
        meta = json.loads((fed.root / "federation.json").read_text())
        meta["ca_generation"] = generation = int(meta.get("ca_generation", 1)) + 1  # its name: none repeats
        write_atomic(fed.root / "federation.json", (json.dumps(meta) + "\n").encode())
        CertificateAuthority.create(fed.federation_id, _now(now_ms), generation=generation).save(fed.root, NEXT_CA)
    if fed.ca().cert != x509.load_pem_x509_certificate(staged.read_bytes()):  # the old CA still issues: it hands over
        new, current = CertificateAuthority.load(fed.root, NEXT_CA), fed.ca()
        cross = fed.root / CROSS
        if not cross.exists() or x509.load_pem_x509_certificate(cross.read_bytes()).subject != new.cert.subject:
            write_atomic(cross, current.cross_certify(new))
        roots = [r for r in fed.roots() if r != new.cert] + [new.cert]
        write_atomic(fed.root / ROOTS, b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots))
        new.save(fed.root)  # the old key is gone from here on
    (fed.root / f"{NEXT_CA}.key").unlink(missing_ok=True)
    staged.unlink()  # last: while it is there, running this again finishes the rotation
    fsync_dir(fed.root)
    return fingerprint(fed.ca().cert)


def retire_ca(fed: Federation) -> list[bytes]:
    """End a rotation of the CA: only the issuing CA is trusted from the next directory.
    Refused while any member's current certificate was issued by another. Returns the CAs
    no longer trusted, by fingerprint."""
    current = fed.ca().cert
    if fed.roots() == [current]:
        return []  # no rotation under way
    behind = [
        name
        for name, copy in _members(fed)
        if not copy.exists() or not chains_to(x509.load_pem_x509_certificate(copy.read_bytes()), [], [current])
    ]
    if behind:
        raise FederationError(
            f"{', '.join(behind)} still hold a certificate the previous CA issued: renew each (linkage federation "
            "renew-tls) and publish, let each take it, then retire the old CA"
        )
    retired = [fingerprint(r) for r in fed.roots() if r != current]
    write_atomic(fed.root / ROOTS, current.public_bytes(serialization.Encoding.PEM))
    (fed.root / CROSS).unlink(missing_ok=True)
    fsync_dir(fed.root)
    return retired


def _members(fed: Federation) -> list[tuple[str, Path]]:
    """Each active node and each gateway, with where the copy of its current certificate is
    kept (none for a member enrolled before the federation kept copies)."""
    nodes = [pb.NodeEntry.FromString(p.read_bytes()) for p in sorted(fed.entries.glob("*.pb"))]
    gateways = [pb.GatewayEntry.FromString(p.read_bytes()) for p in sorted(fed.root.glob("gateway-*.pb"))]
    return [
        (f"node {n.node_id}", fed.issued("node", n.node_id)) for n in nodes if n.status == pb.NODE_STATUS_ACTIVE
    ] + [(f"gateway {g.gateway_id}", fed.issued("gateway", g.gateway_id)) for g in gateways]


def publish_directory(
    fed: Federation, now_ms: int, validity_days: int = 7, copy_to: tuple[Path, ...] = ()
) -> pb.Directory:
    """Sign a new directory version from the enrolled entries and write it out."""
    if not 1 <= validity_days <= MAX_VALIDITY_DAYS:
        raise FederationError(
            f"a directory is valid for 1 to {MAX_VALIDITY_DAYS} days ({validity_days} given): nodes refuse "
            "one that has expired, so this would stop the federation"
        )
    meta_path = fed.root / "federation.json"
    meta = json.loads(meta_path.read_text())
    version = int(meta.get("version", 0)) + 1
    directory = pb.Directory(
        federation_id=fed.federation_id,
        version=version,
        issued_at_ms=now_ms,
        expires_at_ms=now_ms + validity_days * 86_400_000,
        suite=SUITES[fed.suite],
        nodes=[pb.NodeEntry.FromString(p.read_bytes()) for p in sorted(fed.entries.glob("*.pb"))],
        gateways=[pb.GatewayEntry.FromString(p.read_bytes()) for p in sorted(fed.root.glob("gateway-*.pb"))],
    )
    directory.tls_roots.extend(c.public_bytes(serialization.Encoding.DER) for c in fed.roots())
    if (cross := fed.root / CROSS).exists():
        directory.tls_cross_certificates.append(
            x509.load_pem_x509_certificate(cross.read_bytes()).public_bytes(serialization.Encoding.DER)
        )
    directory.handovers.extend(
        pb.SignedHandover.FromString(bytes.fromhex(h)) for h in meta.get("directory_handovers", [])
    )
    signed = sign_directory(directory, load_ed25519(fed.root / "directory.key"))
    data = signed.SerializeToString()
    for target in (fed.directory_path, *(d / "directory.pb" for d in copy_to)):
        write_atomic(target, data)  # readers never see a half-written directory
    meta["version"] = version
    write_atomic(meta_path, (json.dumps(meta) + "\n").encode())
    return directory
