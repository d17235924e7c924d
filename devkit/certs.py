"""A private CA and a loopback server certificate, so test clients verify TLS for real.

Shared by the Dovecot sandbox and the tests' SMTP, identity-provider and hostile servers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["write_certs"]


def _issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer[1], hashes.SHA256())


def _usage(*allowed: str) -> x509.KeyUsage:
    names = "digital_signature content_commitment key_encipherment data_encipherment"
    names += " key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    return x509.KeyUsage(**{name: name in allowed for name in names.split()})


def write_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate, so clients verify TLS for real."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engage-listener sandbox CA")])
    ca_cert = _issue(
        "engage-listener sandbox CA", ca_key, (ca_name, ca_key),
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_usage("key_cert_sign", "crl_sign"), True),
    )  # fmt: skip
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    cert = _issue(
        "localhost", key, (ca_name, ca_key),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_usage("digital_signature"), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(san), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False),
    )  # fmt: skip
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, plain))
    return ca_file, cert_file, key_file
