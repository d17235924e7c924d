"""The Authentication element of an account: password, or OAuth2 with Microsoft or Google.

Part of the configuration (see `config`), kept apart like `config_ack`. The same
element sits in ImapListener, Pop3Listener and Acknowledgement/Smtp:

* ``Type`` Password (default: the account's Password element is used);
* ``Type`` Microsoft: ``TenantId``, ``ClientId``, then either app-only client
  credentials (``ClientSecret``, or ``CertificateFile`` [+ ``CertificateThumbprint``])
  or, with neither, delegated sign-in by device code (`engage-listener auth login`);
  ``Authority`` for sovereign clouds (default https://login.microsoftonline.com);
* ``Type`` Google: ``ServiceAccountKeyFile`` (domain-wide delegation, impersonating
  the mailbox), or ``ClientId`` + ``ClientSecret`` of an installed app whose refresh
  token `engage-listener auth login` obtains; ``TokenUri`` overrides the endpoint.

``CaFile`` trusts a private CA for the identity provider's HTTPS endpoints (a
TLS-inspecting proxy, or tests). Nothing here talks to the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from engage_listener.config import secret_refs as secrets
from engage_listener.config.xmltree import (
    ca_file_problem,
    line,
    optional,
    relative_to,
    secret_value,
    text,
    values,
)
from engage_listener.errors import ConfigProblem, SecretError

AUTH_TYPES = ("Password", "Microsoft", "Google")
DEFAULT_REDIRECT_URI = "http://localhost"
_MICROSOFT_ONLY = ("TenantId", "CertificateFile", "CertificateThumbprint", "Authority")
_GOOGLE_ONLY = ("ServiceAccountKeyFile", "TokenUri")
_THUMBPRINT = re.compile(r"^[0-9A-Fa-f]{40}$")
_SA_FIELDS = ("client_email", "private_key", "token_uri")


@dataclass(frozen=True)
class AuthConfig:
    """How an account logs in; secrets are kept out of repr()."""

    type: str = "Password"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_file: Path | None = None
    certificate_thumbprint: str | None = None
    authority: str | None = None
    service_account_key_file: Path | None = None
    token_uri: str | None = None
    ca_file: Path | None = None
    redirect_uri: str = DEFAULT_REDIRECT_URI  # delegated sign-in: where the browser lands
    key_path: Path | None = None  # the key that seals the token cache
    source_line: int = 0

    @property
    def is_oauth(self) -> bool:
        return self.type in ("Microsoft", "Google")

    @property
    def flow(self) -> str:
        """password, client_credentials, delegated, service_account or installed_app."""
        if self.type == "Microsoft":
            app_only = self.client_secret is not None or self.certificate_file is not None
            return "client_credentials" if app_only else "delegated"
        if self.type == "Google":
            return "service_account" if self.service_account_key_file else "installed_app"
        return "password"

    @property
    def kind(self) -> str:
        """Words for `auth status` and check-config."""
        return {
            "client_credentials": "Microsoft app-only ("
            + ("certificate" if self.certificate_file else "client secret")
            + ")",
            "delegated": "Microsoft delegated (sign-in by pasted address or device code)",
            "service_account": "Google service account (domain-wide delegation)",
            "installed_app": "Google installed app (refresh token)",
        }.get(self.flow, "password")


def auth_type(node: etree._Element | None) -> str:
    """The Type of an Authentication element; Password when absent or empty."""
    if node is None:
        return "Password"
    return optional(values(node), "Type") or "Password"


def load_certificate(path: Path, thumbprint: str | None) -> tuple[str, str]:
    """(private key PEM, SHA-1 thumbprint hex) from a PEM file; ValueError says what is wrong.

    The thumbprint may be omitted when the file also holds the certificate.
    """
    # Imported here, not at the top: start-up time (only CertificateFile needs cryptography).
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read certificate file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"{path} holds no unencrypted PEM private key (export it with the certificate)"
        ) from None
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    if thumbprint:
        if not _THUMBPRINT.match(thumbprint):
            raise ValueError("CertificateThumbprint must be 40 hexadecimal digits (SHA-1)")
        return pem, thumbprint.upper()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(
            f"{path} holds no certificate: add it to the file or give CertificateThumbprint"
        ) from None
    return pem, cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra's thumbprint


def _service_account_problem(file: Path) -> str | None:
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read service account key {file}: {exc.strerror}"
    except ValueError:
        return f"{file} is not a JSON service account key"
    if not isinstance(info, dict) or info.get("type") != "service_account":
        return f"{file} is not a service account key (type must be service_account)"
    missing = [name for name in _SA_FIELDS if not info.get(name)]
    return f"{file} lacks {', '.join(missing)}" if missing else None


def _microsoft_problems(found: dict[str, etree._Element], path: Path) -> list[tuple[str, str]]:
    problems = [(name, "required with Type Microsoft") for name in ("TenantId", "ClientId")]
    problems = [p for p in problems if p[0] not in found]
    problems += [(n, "applies to Type Google only") for n in _GOOGLE_ONLY if n in found]
    if "ClientSecret" in found and "CertificateFile" in found:
        problems.append(("CertificateFile", "give ClientSecret or CertificateFile, not both"))
    if "CertificateThumbprint" in found and "CertificateFile" not in found:
        problems.append(("CertificateThumbprint", "needs CertificateFile"))
    if "CertificateFile" in found:
        try:
            load_certificate(
                relative_to(path, text(found["CertificateFile"])),
                optional(found, "CertificateThumbprint"),
            )
        except ValueError as exc:
            problems.append(("CertificateFile", str(exc)))
    authority = optional(found, "Authority")
    if authority is not None and not authority.lower().startswith("https://"):
        problems.append(
            ("Authority", "must be an https:// URL, e.g. https://login.microsoftonline.us")
        )
    return problems


def _google_problems(found: dict[str, etree._Element], path: Path) -> list[tuple[str, str]]:
    problems = [(n, "applies to Type Microsoft only") for n in _MICROSOFT_ONLY if n in found]
    if "ServiceAccountKeyFile" in found:
        problem = _service_account_problem(relative_to(path, text(found["ServiceAccountKeyFile"])))
        if problem:
            problems.append(("ServiceAccountKeyFile", problem))
        problems += [
            (n, "not used with ServiceAccountKeyFile")
            for n in ("ClientId", "ClientSecret")
            if n in found
        ]
    else:
        problems += [
            (n, "required with Type Google (or give ServiceAccountKeyFile)")
            for n in ("ClientId", "ClientSecret")
            if n not in found
        ]
    uri = optional(found, "TokenUri")
    if uri is not None and not uri.lower().startswith("https://"):
        problems.append(("TokenUri", "must be an https:// URL"))
    return problems


def auth_problems(
    node: etree._Element, path: Path, key_path: Path | None = None
) -> list[ConfigProblem]:
    """What the XSD cannot say about an Authentication element; secrets are never quoted."""
    found = values(node)
    kind = auth_type(node)
    problems: list[tuple[str, str]] = []
    if kind == "Password":
        problems += [(n, "applies to Type Microsoft or Google only") for n in found if n != "Type"]
    elif kind == "Microsoft":
        problems += _microsoft_problems(found, path)
    elif kind == "Google":
        problems += _google_problems(found, path)
    if "ClientSecret" in found:
        try:
            secret_value(found["ClientSecret"], path, key_path)
        except SecretError as exc:
            problems.append(("ClientSecret", str(exc)))
    ca = optional(found, "CaFile")
    if ca is not None and (message := ca_file_problem(path, ca)):
        problems.append(("CaFile", message))
    if kind in ("Microsoft", "Google"):
        try:
            secrets.load_key(key_path or secrets.default_key_path())
        except SecretError as exc:
            problems.append(("Type", f"OAuth2 tokens are stored encrypted with the key: {exc}"))
    file = str(path)
    return [
        ConfigProblem(file, line(found[name]) if name in found else line(node), name, message)
        for name, message in problems
    ]


def auth_config(node: etree._Element, path: Path, key_path: Path | None = None) -> AuthConfig:
    """The AuthConfig of a valid Authentication element (secrets resolved)."""
    found = values(node)

    def file(name: str) -> Path | None:
        value = optional(found, name)
        return relative_to(path, value) if value else None

    authority = optional(found, "Authority")
    return AuthConfig(
        type=auth_type(node),
        tenant_id=optional(found, "TenantId"),
        client_id=optional(found, "ClientId"),
        client_secret=secret_value(found["ClientSecret"], path, key_path)
        if "ClientSecret" in found
        else None,
        certificate_file=file("CertificateFile"),
        certificate_thumbprint=optional(found, "CertificateThumbprint"),
        authority=authority.rstrip("/") if authority else None,
        service_account_key_file=file("ServiceAccountKeyFile"),
        token_uri=optional(found, "TokenUri"),
        ca_file=file("CaFile"),
        redirect_uri=optional(found, "RedirectUri") or DEFAULT_REDIRECT_URI,
        key_path=key_path or secrets.default_key_path(),
        source_line=line(node),
    )


def password_problem(
    block: etree._Element, path: Path, what: str = "Password"
) -> ConfigProblem | None:
    """A block without Password is fine only when its Authentication is OAuth2."""
    found = values(block)
    if "Password" in found or auth_type(found.get("Authentication")) != "Password":
        return None
    return ConfigProblem(
        str(path),
        line(block),
        what,
        "missing required element Password (or an Authentication of Type Microsoft or Google)",
    )
