"""The XML configuration, turned into frozen dataclasses in this one place.

The format is the original Engage Integration Service one, described by the shipped XSD.
Nothing here exits or prints: every problem found (syntax, schema, meaning) is collected
and raised at once as a ConfigError, so an operator fixes a file in one go. The XSD is
also read to word messages ("expected one of ..."), so adding an element there is enough
for the messages to follow.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from lxml import etree

from engage_listener.config import secret_refs as secrets
from engage_listener.config.ack import AckConfig, ack_config, ack_problems
from engage_listener.config.auth import AuthConfig, auth_config, auth_problems, password_problem
from engage_listener.config.cautions import config_warnings
from engage_listener.config.schema import parse_xml, schema_path, schema_problems
from engage_listener.config.xmltree import ca_file_problem
from engage_listener.config.xmltree import flag as _flag
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import optional as _optional
from engage_listener.config.xmltree import relative_to as _relative_to
from engage_listener.config.xmltree import text as _text
from engage_listener.config.xmltree import values as _values
from engage_listener.errors import ConfigError, ConfigProblem, SecretError

DEFAULT_STORE_PATH = Path("/var/lib/engage-listener/engage-listener.sqlite3")
DEFAULT_MAX_MESSAGE_SIZE = 157_286_400  # 150 MB: the largest mail Exchange Online accepts
DEFAULT_PROTOCOL_LOG_KEEP_DAYS = 14

FollowUpsFrom = Literal["Participants", "Anyone"]


__all__ = [
    "Config",
    "ImapListenerConfig",
    "MetricsConfig",
    "Secret",
    "StoreConfig",
    "describe",
    "load_config",
    "parse_config",
    "schema_path",
]


@dataclass(frozen=True)
class Secret:
    """A secret; repr() and str() mask it so a logged or printed config never leaks it."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """Give the value; call it only where the secret is really used (the login)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class ImapListenerConfig:
    """One ImapListener block, defaults applied."""

    id: str
    host: str
    port: int
    username: str
    password: Secret
    use_ssl: bool
    input_folder: str
    output_folder: str | None
    extract_attachments: bool
    sync_max_wait_time: int
    sync_max_changes_count: int
    protocol_log_file: str | None
    ca_file: Path | None
    enabled: bool
    source_line: int
    case_process: str | None = None
    unknown_sender: str = "CreateCustomer"
    default_customer_id: int | None = None
    automatic_mail: str = "Ignore"
    subject_prefixes: tuple[str, ...] = ()
    routing_hook: str | None = None
    routing_hook_line: int = 0
    routing_timeout: int = 10
    max_attempts: int = 3
    error_folder: str | None = None
    acknowledgement: AckConfig | None = None
    protocol_log_bodies: bool = False
    protocol_log_max_size: int = 10 * 1024 * 1024
    protocol_log_keep: int = 5
    read_from_date: dt.date | None = None
    time_zone: str = "UTC"
    require_approval: bool = False
    protocol: str = "imap"  # "imap" or "pop3" (a Pop3Listener block)
    leave_on_server: bool = False  # POP3 only
    authentication: AuthConfig | None = None  # None: the Password
    allow_plaintext_login: bool = False  # UseSsl False without STARTTLS/STLS may log in
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # larger mail: quarantined `oversize`
    follow_ups_from: FollowUpsFrom = "Participants"  # who may join a case by token/header
    protocol_log_keep_days: int = DEFAULT_PROTOCOL_LOG_KEEP_DAYS  # prune older log files


@dataclass(frozen=True)
class StoreConfig:
    """Where the case store lives."""

    path: Path


@dataclass(frozen=True)
class MetricsConfig:
    """The optional Prometheus endpoint."""

    host: str
    port: int
    health_max_age: int = 900


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    path: Path
    imap_listeners: tuple[ImapListenerConfig, ...]
    use_imap_listener: bool
    store: StoreConfig
    pop3_listeners: tuple[ImapListenerConfig, ...] = ()
    use_pop3_listener: bool = False
    metrics: MetricsConfig | None = None

    @property
    def listeners(self) -> tuple[ImapListenerConfig, ...]:
        """Every listener block, IMAP and POP3, in file order within each kind."""
        return self.imap_listeners + self.pop3_listeners

    def enabled_listeners(self) -> tuple[ImapListenerConfig, ...]:
        """The listeners to run: a kind runs only while its Process/Use... flag is True."""
        imap = self.imap_listeners if self.use_imap_listener else ()
        pop3 = self.pop3_listeners if self.use_pop3_listener else ()
        return tuple(lst for lst in imap + pop3 if lst.enabled)

    def warnings(self) -> list[str]:
        """Valid but risky settings, for check-config and the start-up log."""
        return config_warnings(self)


def describe(listener: ImapListenerConfig) -> str:
    """One line for check-config; shows no secret."""
    lst = listener
    target = f"{lst.output_folder} (move)" if lst.output_folder else "(delete)"
    if lst.protocol == "pop3":
        target = "(leave on server)" if lst.leave_on_server else "(delete)"
    kind = "POP3 " if lst.protocol == "pop3" else ""
    extras = [
        "attachments extracted," if lst.extract_attachments else "",
        f"CA {lst.ca_file}," if lst.ca_file else "",
        f"protocol log {lst.protocol_log_file}," if lst.protocol_log_file else "",
    ]
    return " ".join(
        [
            f"{lst.id}: {kind}{lst.host}:{lst.port} {'TLS' if lst.use_ssl else 'plain'}",
            f"user={lst.username} {lst.input_folder} -> {target},",
            f"batch {lst.sync_max_changes_count} mails or {lst.sync_max_wait_time} s,",
            *filter(None, extras),
            "enabled" if lst.enabled else "disabled",
        ]
    )


def load_config(path: Path) -> Config:
    """Read and parse a configuration file; an unreadable file is a ConfigError too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(str(path), 0, "-", f"cannot read: {reason}")]) from exc
    return parse_config(data, path)


def parse_config(data: bytes, path: Path) -> Config:
    """Parse configuration bytes; path names the file in messages and anchors relative paths."""
    file = str(path)
    root, problems = parse_xml(data, file)
    if root is None:
        raise ConfigError(problems)
    problems = schema_problems(root, file) + _semantic_problems(root, path)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return _build_config(root, path)


def _semantic_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
    """What the XSD cannot say; tolerant of invalid trees so all problems come out at once."""
    file = str(path)
    problems: list[ConfigProblem] = []
    problems.extend(_secret_problems(root, path))
    problems.extend(_metrics_problems(root, file))
    for name in ("Process", "Store", "Secrets", "Metrics"):
        for extra in list(root.iterchildren(name))[1:]:
            problems.append(ConfigProblem(file, _line(extra), name, "only one is allowed"))
    for block in root.iterchildren("ImapListener", "Pop3Listener"):
        problems.extend(_listener_problems(_values(block), path))
        problems.extend(_auth_problems(block, root, path))
    return problems


def _listener_problems(values: dict[str, etree._Element], path: Path) -> list[ConfigProblem]:
    """Folders that clash, hosts with spaces, CA files that are not there."""
    file = str(path)
    problems: list[ConfigProblem] = []
    host = values.get("HostName")
    if host is not None and len(_text(host).split()) > 1:
        problems.append(ConfigProblem(file, _line(host), "HostName", "contains whitespace"))
    source = _text(values["InputFolder"]) if "InputFolder" in values else "INBOX"
    target = values.get("OutputFolder")
    if target is not None and _same_folder(source, _text(target)):
        message = f"same as InputFolder '{source}'; processed mail would be read again"
        problems.append(ConfigProblem(file, _line(target), "OutputFolder", message))
    policy = values.get("UnknownSender")
    if (
        policy is not None
        and _text(policy) == "DefaultCustomer"
        and "DefaultCustomerId" not in values
    ):
        message = "DefaultCustomer needs a DefaultCustomerId"
        problems.append(ConfigProblem(file, _line(policy), "UnknownSender", message))
    if "Acknowledgement" in values:
        ack = values["Acknowledgement"]
        problems.extend(ack_problems(ack, path, key_path(ack.getroottree().getroot(), path)))
    zone = values.get("TimeZone")
    if zone is not None and not _known_zone(_text(zone)):
        problems.append(ConfigProblem(file, _line(zone), "TimeZone", "unknown time zone"))
    log = values.get("ProtocolLogFile")
    if log is not None and _windows_path(_text(log)):
        message = "a Windows path; give a path on this machine (relative: to this file)"
        problems.append(ConfigProblem(file, _line(log), "ProtocolLogFile", message))
    ca = values.get("CaFile")
    if ca is not None and _text(ca) and (ca_problem := ca_file_problem(path, _text(ca))):
        problems.append(ConfigProblem(file, _line(ca), "CaFile", ca_problem))
    return problems


def _auth_problems(block: etree._Element, root: etree._Element, path: Path) -> list[ConfigProblem]:
    """A Password, or an Authentication that can log in (OAuth2 settings, secrets, files)."""
    missing = password_problem(block, path)
    node = _values(block).get("Authentication")
    found = auth_problems(node, path, key_path(root, path)) if node is not None else []
    return found + ([missing] if missing else [])


def key_path(root: etree._Element, path: Path) -> Path:
    """The key for enc: values: Secrets/KeyFile, else the systemd/state default."""
    block = _values(root).get("Secrets")
    key = _optional(_values(block), "KeyFile") if block is not None else None
    return _relative_to(path, key) if key else secrets.default_key_path()


def _secret(node: etree._Element, root: etree._Element, path: Path) -> str:
    return secrets.resolve(
        _text(node), key_path=key_path(root, path), base_dir=path.absolute().parent
    )


def _secret_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
    """Every Password that cannot be resolved (wrong key, tampered, missing env/file)."""
    problems: list[ConfigProblem] = []
    for node in root.iter("Password"):
        try:
            _secret(node, root, path)
        except SecretError as exc:
            problems.append(ConfigProblem(str(path), _line(node), "Password", str(exc)))
    return problems


def _known_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _metrics_problems(root: etree._Element, file: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for node in root.iterchildren("Metrics"):
        _host, _, port = (node.get("Listen") or "").rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            message = "Listen must be host:port, e.g. 127.0.0.1:9464"
            problems.append(ConfigProblem(file, _line(node), "Metrics", message))
    return problems


def _same_folder(a: str, b: str) -> bool:
    """IMAP folder names are case-sensitive, except INBOX."""
    return a == b or a.upper() == b.upper() == "INBOX"


def _listener(block: etree._Element, config_path: Path) -> ImapListenerConfig:
    """One validated ImapListener block, defaults applied."""
    values = _values(block)
    use_ssl = _flag(values, "UseSsl", True)
    port = _optional(values, "Port")
    ca_file = _optional(values, "CaFile")
    return ImapListenerConfig(
        id=block.get("ID", "").strip(),
        host=_text(values["HostName"]),
        port=int(port) if port is not None else (993 if use_ssl else 143),
        username=_text(values["UserName"]),
        password=Secret(_secret(values["Password"], block.getroottree().getroot(), config_path))
        if "Password" in values
        else Secret(""),
        use_ssl=use_ssl,
        input_folder=_optional(values, "InputFolder") or "INBOX",
        output_folder=_optional(values, "OutputFolder"),
        extract_attachments=_flag(values, "ExtractAttachments", False),
        sync_max_wait_time=int(_optional(values, "SyncMaxWaitTime") or 60),
        sync_max_changes_count=int(_optional(values, "SyncMaxChangesCount") or 10),
        protocol_log_file=_protocol_log_path(config_path, _optional(values, "ProtocolLogFile")),
        ca_file=_relative_to(config_path, ca_file) if ca_file is not None else None,
        enabled=_flag(values, "Enabled", True),
        source_line=_line(block),
        acknowledgement=ack_config(
            values["Acknowledgement"],
            config_path,
            _text(values["UserName"]),
            key_path(block.getroottree().getroot(), config_path),
        )
        if "Acknowledgement" in values
        else None,
        authentication=auth_config(
            values["Authentication"],
            config_path,
            key_path(block.getroottree().getroot(), config_path),
        )
        if "Authentication" in values
        else None,
        **_case_settings(values),
    )


def _case_settings(values: dict[str, etree._Element]) -> dict[str, Any]:
    """The case-engine elements of a listener, defaults applied."""
    customer = _optional(values, "DefaultCustomerId")
    prefixes = _optional(values, "SubjectPrefixes") or ""
    hook = values.get("RoutingHook")
    return {
        "case_process": _optional(values, "CaseProcess"),
        "unknown_sender": _optional(values, "UnknownSender") or "CreateCustomer",
        "default_customer_id": int(customer) if customer else None,
        "automatic_mail": _optional(values, "AutomaticMail") or "Ignore",
        "subject_prefixes": tuple(p.strip() for p in prefixes.split(",") if p.strip()),
        "routing_hook": _text(hook) if hook is not None else None,
        "routing_hook_line": _line(hook) if hook is not None else 0,
        "routing_timeout": int(_optional(values, "RoutingTimeout") or 10),
        "max_attempts": int(_optional(values, "MaxAttempts") or 3),
        "error_folder": _optional(values, "ErrorFolder"),
        "read_from_date": dt.date.fromisoformat(date)
        if (date := _optional(values, "ReadFromDate"))
        else None,
        "time_zone": _optional(values, "TimeZone") or "UTC",
        "require_approval": _flag(values, "RequireApproval", False),
        "protocol_log_bodies": _flag(values, "ProtocolLogBodies", False),
        "protocol_log_max_size": int(_optional(values, "ProtocolLogMaxSize") or 10 * 1024 * 1024),
        "protocol_log_keep": int(_optional(values, "ProtocolLogKeep") or 5),
        "protocol_log_keep_days": int(
            _optional(values, "ProtocolLogKeepDays") or DEFAULT_PROTOCOL_LOG_KEEP_DAYS
        ),
        "allow_plaintext_login": _flag(values, "AllowPlaintextLogin", False),
        "max_message_size": int(_optional(values, "MaxMessageSize") or DEFAULT_MAX_MESSAGE_SIZE),
        "follow_ups_from": cast(
            FollowUpsFrom, _optional(values, "FollowUpsFrom") or "Participants"
        ),
    }


def _protocol_log_path(config_path: Path, value: str | None) -> str | None:
    """A protocol log pattern; a relative one is taken from the configuration's directory."""
    return str(_relative_to(config_path, value)) if value else None


def _windows_path(value: str) -> bool:
    """`C:\\...`, `C:/...` or `\\\\server\\share`: paths of the original Windows service."""
    return bool(re.match(r"^([A-Za-z]:[\\/]|\\\\)", value))


def _metrics(node: etree._Element) -> MetricsConfig:
    host, _, port = (node.get("Listen") or "").strip().rpartition(":")
    age = (node.get("HealthMaxAge") or "900").strip()
    return MetricsConfig(host.strip("[]") or "127.0.0.1", int(port), int(age))


def _pop3(block: etree._Element, config_path: Path) -> ImapListenerConfig:
    """A Pop3Listener block: the same settings, POP3 port defaults, LeaveOnServer."""
    values = _values(block)
    cfg = _listener(block, config_path)
    port = _optional(values, "Port")
    return replace(
        cfg,
        protocol="pop3",
        port=int(port) if port is not None else (995 if cfg.use_ssl else 110),
        leave_on_server=_flag(values, "LeaveOnServer", False),
    )


def _build_config(root: etree._Element, path: Path) -> Config:
    """The Config of a valid tree."""
    blocks = _values(root)
    process = _values(blocks["Process"]) if "Process" in blocks else {}
    store = _optional(_values(blocks["Store"]), "Path") if "Store" in blocks else None
    return Config(
        path=path,
        imap_listeners=tuple(_listener(b, path) for b in root.iterchildren("ImapListener")),
        use_imap_listener=_flag(process, "UseImapListener", False),
        pop3_listeners=tuple(_pop3(b, path) for b in root.iterchildren("Pop3Listener")),
        use_pop3_listener=_flag(process, "UsePop3Listener", False),
        metrics=_metrics(blocks["Metrics"]) if "Metrics" in blocks else None,
        store=StoreConfig(_relative_to(path, store) if store else DEFAULT_STORE_PATH),
    )
