"""The API's own HTTPS: the `tls:` settings, and a certificate issued by the state's CA."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from apsis_common.tls import CertPair, new_cert, write_private
from apsis_server.core.fields import FieldError, Fields, Invalid, boolean, string

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsSettings:
    """The `tls:` section: a certificate and key on disk, or `auto` (issued by the state CA)."""

    cert: Path | None = None
    key: Path | None = None
    auto: bool = False


def parse_tls(f: Fields, base: Path) -> TlsSettings:
    """`tls: {cert: PATH, key: PATH}` or `tls: {auto: true}`."""
    cert = f.take("cert", lambda v, p: base / string(v, p), None)
    key = f.take("key", lambda v, p: base / string(v, p), None)
    auto = f.take("auto", boolean, False)
    f.done()
    if (cert is None) != (key is None):
        raise Invalid([FieldError(f.path, "give both cert and key")])
    if auto and cert is not None:
        raise Invalid([FieldError(f.at("auto"), "auto issues its own cert; drop cert and key")])
    return TlsSettings(cert, key, auto)


def _hosts(host: str, public_url: str | None) -> list[str]:
    hosts = [host, "127.0.0.1", "localhost"]
    if public_url:
        name = urlsplit(public_url).hostname
        if name:
            hosts.append(name)
    return [h for h in dict.fromkeys(hosts) if h not in ("0.0.0.0", "::", "")]


def _covers(cert_pem: str, hosts: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    names |= set(san.get_values_for_type(x509.DNSName))
    return all(_normal(h) in names for h in hosts)


def _normal(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def issue_cert(state: Path, host: str, public_url: str | None, ca: CertPair) -> tuple[Path, Path]:
    """For `tls: {auto: true}`: the certificate and key for the API issued by the
    state's CA (made, or remade when the host names change), in `state/tls/`; agents
    already trust that CA, so the webhook can be `https`."""
    directory = state / "tls"
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    hosts = _hosts(host, public_url)
    fresh = cert_path.exists() and key_path.exists()
    if not fresh or not _covers(cert_path.read_text(), hosts):
        pair = new_cert(ca, hosts, common_name=hosts[0])
        write_private(key_path, pair.key_pem)
        write_private(cert_path, pair.cert_pem)
        log.info("issued the API certificate for %s in %s", ", ".join(hosts), directory)
    return cert_path, key_path


def check_trusted(cert_path: Path, ca: CertPair, ca_dir: Path) -> None:
    """Warn when the API certificate is not issued by the state CA: the local agent
    verifies the `https` webhook against that CA only, and would refuse it."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature) as exc:
        log.warning(
            "the API certificate %s is not issued by the CA in %s (%s): agents will "
            "refuse the https webhook; use tls: {auto: true} or a certificate from that CA",
            cert_path,
            ca_dir,
            str(exc) or type(exc).__name__,
        )
