"""A running process's TLS certificate, renewed without a restart. Its files are read again
when they change, and what they then hold is taken only once it passes every check
(`pki.check_certificate`), so a half-copied or wrong file never replaces a working
certificate. How soon the one in use lapses is a metric, and a daily warning in the log
from RENEW_WITHIN_DAYS before."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linkage import logs
from linkage.clock import DAY_MS, Clock, utc_minute
from linkage.files import write_atomic
from linkage.pki import CertificateProblem, CheckedCertificate, certificate_facts, chains_to, fingerprint
from linkage.transport import TlsFiles, TlsMaterial
from linkage.v1.directory_pb2 import Directory

RENEW_WITHIN_DAYS = 30  # of a certificate's 90: renew it by then (`linkage federation renew-tls`)
log = logs.get("tls")


@dataclass(frozen=True)
class Renewal:
    material: TlsMaterial
    checked: CheckedCertificate


class CertificateWatch:
    def __init__(self, files: TlsFiles, identity_uri: str, clock: Clock) -> None:
        self.files = files
        self.identity_uri = identity_uri
        self.clock = clock
        self._version = files.version()
        self.in_use = files.read()
        self.fingerprint, self.not_after_ms = certificate_facts(self.in_use.cert)
        self._warned_at_ms: int | None = None
        self._unreadable: str | None = None  # what was last said of files that could not be read

    def renewal(self) -> Renewal | None:
        """What the files hold, if they changed since last asked and it may be used; a
        refusal is logged once for each change."""
        try:
            version = self.files.version()
            if version == self._version:
                return None
            material = self.files.read()
        except OSError as exc:  # one of them being replaced, or gone: looked at again next time, said once
            problem = f"cannot read {exc.filename}: {exc.strerror}"
            if problem != self._unreadable:
                self._unreadable = problem
                log.warning("tls.renewal_refused", problem=problem)
            return None
        self._version, self._unreadable = version, None
        if material == self.in_use:
            return None
        try:
            return Renewal(material, material.check(self.identity_uri, self.clock.now_ms()))
        except CertificateProblem as exc:
            log.warning("tls.renewal_refused", problem=str(exc))
            return None

    def use(self, renewal: Renewal) -> None:
        self.in_use = renewal.material
        self.fingerprint, self.not_after_ms = renewal.checked.fingerprint, renewal.checked.not_after_ms
        self._warned_at_ms = None
        log.info("tls.renewed", fingerprint=self.fingerprint.hex(), lapses=utc_minute(self.not_after_ms))

    def expires_in_s(self) -> float:
        return (self.not_after_ms - self.clock.now_ms()) / 1000

    def warn_if_lapsing(self) -> None:
        """A warning a day while the certificate in use lapses within RENEW_WITHIN_DAYS."""
        now = self.clock.now_ms()
        left = self.not_after_ms - now
        if left > RENEW_WITHIN_DAYS * DAY_MS or (self._warned_at_ms is not None and now - self._warned_at_ms < DAY_MS):
            return
        self._warned_at_ms = now
        log.warning(
            "tls.certificate_lapsing",
            days_left=max(0, -(-left // DAY_MS)),  # whole days, rounded up
            lapses=utc_minute(self.not_after_ms),
            remedy="linkage federation renew-tls",
        )


class ServerCertificate:
    """A server's side: gRPC asks before every TLS handshake whether to present another
    certificate, from a thread of its own; connections already open keep theirs."""

    def __init__(self, watch: CertificateWatch) -> None:
        self.watch = watch
        self._lock = threading.Lock()
        self._next: TlsMaterial | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.watch.in_use.server_configuration(),
            self._fetch,  # type: ignore[arg-type]  # the stub leaves out None, gRPC's "no change"
            require_client_authentication=True,
        )

    def check(self) -> None:
        """Take renewed files, if any: also from the event loop, so an idle server notices."""
        with self._lock:
            if (renewal := self.watch.renewal()) is not None:
                self.watch.use(renewal)
                self._next = renewal.material

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        self.check()
        with self._lock:
            taken, self._next = self._next, None
        return None if taken is None else taken.server_configuration()  # None: keep the one in use


def new_roots(files: TlsFiles, directory: Directory) -> list[x509.Certificate] | None:
    """The CAs the directory says to trust (`tls_roots`), if they are not those in this
    process's CA file: a rotation of the federation CA began or ended. A CA is added only
    when one already trusted certified it (`tls_cross_certificates`), so the key that signs
    the directory cannot on its own make members trust a CA. None when nothing is to change,
    for a directory that names no CAs (one published before they were named), and for one
    that adds a CA nobody trusted certified (said)."""
    if not directory.tls_roots:
        return None
    try:
        wanted = [x509.load_der_x509_certificate(r) for r in directory.tls_roots]
        crosses = [x509.load_der_x509_certificate(c) for c in directory.tls_cross_certificates]
    except ValueError:
        log.error("tls.roots_refused", problem="the directory's CAs are not certificates")
        return None
    try:
        held = x509.load_pem_x509_certificates(files.ca.read_bytes())
    except (OSError, ValueError):
        held = []
    if set(held) == set(wanted):
        return None
    for root in wanted:
        vouched = any(
            c.subject == root.subject and c.public_key() == root.public_key() and chains_to(c, [], held)
            for c in crosses
        )
        if root not in held and not vouched:
            log.error(
                "tls.roots_refused",
                problem="a CA that no CA this process trusts has certified",
                fingerprint=fingerprint(root).hex(),
            )
            return None
    return wanted


def write_roots(files: TlsFiles, roots: list[x509.Certificate]) -> bool:
    """Replace the CA file whole; the certificate watch takes it (server: from the next
    handshake; node: a new channel). Said, and the CAs in use kept (False), if it cannot be
    written."""
    try:
        write_atomic(files.ca, b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots))
    except OSError as exc:
        log.error("tls.roots_not_saved", file=str(files.ca), error=exc.strerror)
        return False
    log.warning("tls.roots_changed", roots=roots_detail(roots))
    return True


def roots_detail(roots: list[x509.Certificate]) -> list[str]:
    return [fingerprint(r).hex() for r in roots]
