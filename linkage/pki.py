"""The federation's certificate authority and the TLS certificates it issues.

Identities are SPIFFE-style URIs in the certificate's SAN
(spiffe://<federation>/node/<id>, spiffe://<federation>/gateway/<id>). A peer is
who its certificate says, never what a request field claims.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linkage.clock import utc_minute
from linkage.files import write_atomic, write_private


def spiffe_id(federation_id: str, kind: str, ident: str) -> str:
    return f"spiffe://{federation_id}/{kind}/{ident}"


def parse_spiffe_id(uri: str, federation_id: str) -> tuple[str, str] | None:
    """(kind, id) for a SPIFFE id of this federation, else None."""
    prefix = f"spiffe://{federation_id}/"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2 or parts[0] not in ("node", "gateway") or not parts[1]:
        return None
    return parts[0], parts[1]


def cert_fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 of the DER encoding: what the directory pins for each peer."""
    return fingerprint(x509.load_pem_x509_certificate(cert_pem))


def fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def certificate_facts(cert_pem: bytes) -> tuple[bytes, int]:
    """A certificate's fingerprint, and when it lapses (Unix milliseconds), from one parse."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return fingerprint(cert), _millis(cert.not_valid_after_utc)


def _millis(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def identities(cert_pem: bytes) -> list[str]:
    """The URIs a certificate names (a member's SPIFFE id)."""
    return _uris(x509.load_pem_x509_certificate(cert_pem))


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.UniformResourceIdentifier)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CertificateProblem(ValueError):
    """A certificate and key that must not be used, and why, in words an operator can act on."""


@dataclass(frozen=True)
class CheckedCertificate:
    fingerprint: bytes
    not_after_ms: int


def chains_to(cert: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    """Whether `cert` was issued by one of `roots`, directly or through one of `intermediates`
    (the CA that issues now, certified by the one before it, while a rotation of the CA runs)."""
    return any(_issued_by(cert, root) for root in roots) or any(
        _issued_by(cert, link) and any(_issued_by(link, root) for root in roots) for link in intermediates
    )


def check_certificate(
    cert_pem: bytes, key_pem: bytes, ca_pem: bytes, identity_uri: str, now_ms: int
) -> CheckedCertificate:
    """That a certificate and key read from files may be used: a pair, issued by a CA in the
    CA file (through the chain that follows the certificate in its file, if any), for this
    identity, valid now. Checked before a running process changes to them, since TLS would
    find out only at the next handshake, and then refuse every one."""
    try:
        cert, *chain = x509.load_pem_x509_certificates(cert_pem)
        roots = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise CertificateProblem("the certificate or the CA file is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        matches = key.public_key() == cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateProblem("the key file is not an unencrypted PEM private key of a kind TLS takes") from None
    if not matches:
        raise CertificateProblem("the key is not the certificate's (were both files replaced?)")
    if not chains_to(cert, chain, roots):
        raise CertificateProblem("the certificate was not issued by the federation CA in the CA file")
    if identity_uri not in _uris(cert):
        raise CertificateProblem(f"the certificate does not name {identity_uri}")
    if not _millis(cert.not_valid_before_utc) <= now_ms <= _millis(cert.not_valid_after_utc):
        raise CertificateProblem(
            f"the certificate is valid from {utc_minute(_millis(cert.not_valid_before_utc))} "
            f"to {utc_minute(_millis(cert.not_valid_after_utc))}, not now"
        )
    return CheckedCertificate(fingerprint(cert), _millis(cert.not_valid_after_utc))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(
        cls, federation_id: str, now: dt.datetime, days: int = 3650, generation: int = 1
    ) -> CertificateAuthority:
        """A new federation CA. Each generation has a name of its own: TLS finds a
        certificate's issuer by name, and two CAs of one name would hide each other."""
        key = ec.generate_private_key(ec.SECP256R1())
        label = f"Linkage CA {federation_id}" + (f" #{generation}" if generation > 1 else "")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label[:64])])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def save(self, directory: Path, name: str = "ca") -> None:
        write_private(directory / f"{name}.key", _key_pem(self.key))
        write_atomic(directory / f"{name}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(cls, directory: Path, name: str = "ca") -> CertificateAuthority:
        key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("CA key is not an EC key")
        cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        return cls(key, cert)

    def issue(
        self,
        identity_uri: str,
        common_name: str,
        now: dt.datetime,
        days: int,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
    ) -> tuple[bytes, bytes]:
        """A fresh key and certificate for one identity: (key_pem, cert_pem)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri)]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        cert = self._certify(
            key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), sans, usages, now, days
        )
        return _key_pem(key), cert

    def cross_certify(self, successor: CertificateAuthority) -> bytes:
        """`successor`'s name and key certified by this CA, until this CA's end: what a member
        that trusts only this CA needs to accept what the successor issues."""
        usage = successor.cert.extensions.get_extension_for_class(x509.KeyUsage).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(successor.cert.subject)
            .issuer_name(self.cert.subject)
            .public_key(successor.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(successor.cert.not_valid_before_utc)
            .not_valid_after(min(self.cert.not_valid_after_utc, successor.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def renew(self, cert_pem: bytes, now: dt.datetime, days: int, roots: list[x509.Certificate]) -> bytes:
        """A certificate like `cert_pem` (one a CA of `roots` issued), issued by this CA for
        the same key, names and uses, valid `days` from `now`: the member's private key never
        leaves it."""
        old, *chain = x509.load_pem_x509_certificates(cert_pem)
        if not chains_to(old, chain, roots):
            raise CertificateProblem("the certificate was not issued by this federation's CA")
        public_key = old.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CertificateProblem("the certificate's key is not the EC key this CA issues for")
        names = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        return self._certify(public_key, old.subject, list(names), list(usages), now, days)

    def _certify(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        now: dt.datetime,
        days: int,
    ) -> bytes:
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
