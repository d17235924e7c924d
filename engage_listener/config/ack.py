"""The Acknowledgement block of a listener: its own SMTP account, identity and templates.

Part of the configuration (see `config`), kept apart because it reads template
files and checks their placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from lxml import etree

from engage_listener.config import secret_refs as secrets
from engage_listener.config.auth import AuthConfig, auth_config, auth_problems, auth_type
from engage_listener.config.templates import DEFAULT_TEMPLATE, AckTemplate, template_problems
from engage_listener.config.xmltree import (
    ca_file_problem,
    flag,
    line,
    optional,
    relative_to,
    text,
    values,
)
from engage_listener.errors import ConfigProblem

DEFAULT_MAX_PER_HOUR = 200  # acknowledgements one listener sends in an hour, in all
DEFAULT_MAX_PER_RECIPIENT_PER_HOUR = 3
SECURITIES = ("SSL", "StartTls", "None")
# Which address of a mail gets the acknowledgement (Recipient) or finds the customer
# (the listener's CustomerFrom): From, or a usable Reply-To (see cases.addresses).
AddressChoice = Literal["From", "ReplyTo"]
_PORTS = {"SSL": 465, "StartTls": 587, "None": 25}


def default_port(security: str) -> int:
    """Well-known ports: 465 implicit TLS, 587 submission with STARTTLS, 25 plain."""
    try:
        return _PORTS[security]
    except KeyError:
        raise ValueError(
            f"unknown SMTP security {security!r} (use SSL, StartTls or None)"
        ) from None


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str
    username: str | None
    password: str | None = field(repr=False)
    ca_file: Path | None
    authentication: AuthConfig | None = None  # None: the Password
    allow_plaintext_login: bool = False  # Security None with a UserName needs it


@dataclass(frozen=True)
class AckConfig:
    enabled: bool
    smtp: SmtpConfig
    from_address: str
    from_name: str
    reply_to: str | None
    template: AckTemplate
    on_follow_ups: bool
    max_per_recipient_per_hour: int
    own_addresses: tuple[str, ...]
    source_line: int
    max_per_hour: int = DEFAULT_MAX_PER_HOUR
    # RequireAuthenticated's AuthServId: acknowledge only mail that this server's
    # Authentication-Results header says passed DMARC (None: no such requirement).
    require_authenticated: str | None = None
    recipient: AddressChoice = "From"  # ReplyTo: a usable Reply-To, else From


def _template_text(
    found: dict[str, etree._Element], name: str, path: Path
) -> tuple[str | None, str | None]:
    """(text, problem) from the inline element `name` or the file element `nameFile`."""
    if name in found:
        return text(found[name]), None
    file_node = found.get(f"{name}File")
    if file_node is None:
        return None, None
    file = relative_to(path, text(file_node))
    try:
        return file.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read template {file}: {exc}"


def _template(found: dict[str, etree._Element], path: Path) -> tuple[AckTemplate, list[str]]:
    body, body_problem = _template_text(found, "Body", path)
    html, html_problem = _template_text(found, "HtmlBody", path)
    template = AckTemplate(
        subject=optional(found, "Subject") or DEFAULT_TEMPLATE.subject,
        text=body if body is not None else DEFAULT_TEMPLATE.text,
        html=html if html is not None else (None if body is not None else DEFAULT_TEMPLATE.html),
    )
    problems = [p for p in (body_problem, html_problem) if p]
    return template, problems or template_problems(template)


def ack_problems(
    node: etree._Element, path: Path, key_path: Path | None = None
) -> list[ConfigProblem]:
    """Template, file and login problems of an Acknowledgement block."""
    found = values(node)
    _, problems = _template(found, path)
    smtp = values(found["Smtp"]) if "Smtp" in found else {}
    ca = smtp.get("CaFile")
    if ca is not None and (message := ca_file_problem(path, text(ca))):
        problems.append(message)
    oauth = auth_type(smtp.get("Authentication")) != "Password"
    if "UserName" in smtp and "Password" not in smtp and not oauth:
        problems.append("Smtp has a UserName but no Password")
    if oauth and "UserName" not in smtp:
        problems.append("Smtp with OAuth2 needs a UserName (the mailbox it logs in as)")
    security = text(smtp["Security"]) if "Security" in smtp else "StartTls"
    if security == "None" and "UserName" in smtp and not flag(smtp, "AllowPlaintextLogin", False):
        problems.append(
            "Smtp Security None with a UserName would send the login in clear; use StartTls "
            "or Tls, or set Smtp/AllowPlaintextLogin True"
        )
    required = found.get("RequireAuthenticated")
    if (
        required is not None
        and text(required).lower() == "true"
        and not (required.get("AuthServId") or "").strip()
    ):
        problems.append(
            "RequireAuthenticated True needs AuthServId, the name your receiving server "
            "writes in Authentication-Results (e.g. mx.example.org)"
        )
    result = [ConfigProblem(str(path), line(node), "Acknowledgement", p) for p in problems]
    if "Authentication" in smtp:
        result += auth_problems(smtp["Authentication"], path, key_path)
    return result


def ack_config(
    node: etree._Element, path: Path, imap_username: str, key_path: Path | None = None
) -> AckConfig:
    """The AckConfig of a valid Acknowledgement block."""

    found = values(node)
    smtp = values(found["Smtp"])
    security = optional(smtp, "Security") or "StartTls"
    port = optional(smtp, "Port")
    ca = optional(smtp, "CaFile")
    password = optional(smtp, "Password")
    if password is not None:
        password = secrets.resolve(password, key_path=key_path, base_dir=path.absolute().parent)
    template, _ = _template(found, path)
    own = [a.strip() for a in (optional(found, "OwnAddresses") or "").split(",") if a.strip()]
    own += [text(found["FromAddress"]), optional(found, "ReplyTo") or ""]
    own += [imap_username] if "@" in imap_username else []
    return AckConfig(
        enabled=(node.get("Enabled") or "True").strip().lower() == "true",
        smtp=SmtpConfig(
            host=text(smtp["HostName"]),
            port=int(port) if port else default_port(security),
            security=security,
            username=optional(smtp, "UserName"),
            password=password,
            ca_file=relative_to(path, ca) if ca else None,
            authentication=auth_config(smtp["Authentication"], path, key_path)
            if "Authentication" in smtp
            else None,
            allow_plaintext_login=flag(smtp, "AllowPlaintextLogin", False),
        ),
        from_address=text(found["FromAddress"]),
        from_name=optional(found, "FromName") or "",
        reply_to=optional(found, "ReplyTo"),
        template=template,
        on_follow_ups=flag(found, "OnFollowUps", False),
        max_per_recipient_per_hour=int(
            optional(found, "MaxPerRecipientPerHour") or DEFAULT_MAX_PER_RECIPIENT_PER_HOUR
        ),
        own_addresses=tuple(sorted({a.lower() for a in own if a})),
        source_line=line(node),
        max_per_hour=int(optional(found, "MaxPerHour") or DEFAULT_MAX_PER_HOUR),
        require_authenticated=_required_authserv(found.get("RequireAuthenticated")),
        **_recipient(found),
    )


def _recipient(found: dict[str, etree._Element]) -> dict[str, AddressChoice]:
    """Recipient when given (the XSD allows From or ReplyTo only); else the default."""
    value = optional(found, "Recipient")
    return {"recipient": cast(AddressChoice, value)} if value else {}


def _required_authserv(node: etree._Element | None) -> str | None:
    """RequireAuthenticated's AuthServId when the element is True, else None."""
    if node is None or text(node).lower() != "true":
        return None
    return (node.get("AuthServId") or "").strip().lower() or None
