"""Loading the XML configuration into the frozen model (`config.model`), in this one place.

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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from engage_listener.config import secret_refs as secrets
from engage_listener.config.ack import ack_config, ack_problems
from engage_listener.config.auth import auth_config, auth_problems, password_problem
from engage_listener.config.model import (
    DEFAULT_GRAPH_ENDPOINT,
    DEFAULT_GRAPH_INPUT_FOLDER,
    DEFAULT_STORE_PATH,
    Config,
    ListenerConfig,
    MetricsConfig,
    Secret,
    StoreConfig,
)
from engage_listener.config.rules import rules_config, rules_problems
from engage_listener.config.schema import parse_xml, schema_problems
from engage_listener.config.store import store_config, store_problems
from engage_listener.config.webhook import WebhookConfig, webhook_config, webhook_problems
from engage_listener.config.xmltree import ca_file_problem
from engage_listener.config.xmltree import flag as _flag
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import optional as _optional
from engage_listener.config.xmltree import relative_to as _relative_to
from engage_listener.config.xmltree import text as _text
from engage_listener.config.xmltree import values as _values
from engage_listener.errors import ConfigError, ConfigProblem, SecretError


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
    for node in root.iter("Webhook"):
        problems.extend(webhook_problems(node, path, key_path(root, path)))
    problems.extend(store_problems(root, path))
    for name in ("Process", "Store", "Secrets", "Metrics", "Webhook"):
        for extra in list(root.iterchildren(name))[1:]:
            problems.append(ConfigProblem(file, _line(extra), name, "only one is allowed"))
    for block in root.iterchildren("ImapListener", "Pop3Listener"):
        problems.extend(_listener_problems(_values(block), path))
        problems.extend(_auth_problems(block, root, path))
    for block in root.iterchildren("GraphListener"):
        problems.extend(_listener_problems(_values(block), path, DEFAULT_GRAPH_INPUT_FOLDER))
        problems.extend(_graph_problems(block, root, path))
    return problems


def _graph_problems(block: etree._Element, root: etree._Element, path: Path) -> list[ConfigProblem]:
    """A GraphListener logs in with Microsoft only, on an https GraphEndpoint."""
    file, found = str(path), _values(block)
    problems: list[ConfigProblem] = []
    node = found.get("Authentication")
    if node is not None:
        kind = _optional(_values(node), "Type") or "Password"
        if kind != "Microsoft":
            message = f"a GraphListener needs Type Microsoft, not {kind}"
            problems.append(ConfigProblem(file, _line(node), "Authentication", message))
        else:
            problems.extend(auth_problems(node, path, key_path(root, path)))
    endpoint = found.get("GraphEndpoint")
    if endpoint is not None and not re.match(r"^https://[^/\s]+(/\S*)?$", _text(endpoint)):
        message = "must be an https:// address, e.g. https://graph.microsoft.com/v1.0"
        problems.append(ConfigProblem(file, _line(endpoint), "GraphEndpoint", message))
    return problems


def _listener_problems(
    values: dict[str, etree._Element], path: Path, default_input: str = "INBOX"
) -> list[ConfigProblem]:
    """Folders that clash, hosts with spaces, CA files that are not there."""
    file = str(path)
    problems: list[ConfigProblem] = []
    host = values.get("HostName")
    if host is not None and len(_text(host).split()) > 1:
        problems.append(ConfigProblem(file, _line(host), "HostName", "contains whitespace"))
    source = _text(values["InputFolder"]) if "InputFolder" in values else default_input
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
    if "Rules" in values:
        problems.extend(rules_problems(values["Rules"], file))
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
    return _relative_to(path, key) if key else secrets.default_key_path(config_dir=path.parent)


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


def _password_notices(root: etree._Element, path: Path) -> tuple[str, ...]:
    """Passwords typed as is that look encrypted by the original service (see
    `secret_refs.looks_like_original_cipher`): valid, so a warning, not a problem."""
    found = []
    for node in root.iter("Password"):
        value = _text(node)
        if secrets.looks_like_original_cipher(value):
            found.append(
                f"{path}:{_line(node)}: Password looks encrypted by the original integration "
                "service; engage-listener cannot decrypt it and will send it as typed. Put the "
                "real password in with `engage-listener encrypt-password` (enc:...) or "
                "env:/file:/credential:, or write plain:VALUE if it really is the password"
            )
    return tuple(found)


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


def _listener(block: etree._Element, config_path: Path) -> ListenerConfig:
    """One validated ImapListener block; an absent element keeps the model's default."""
    values = _values(block)
    root = block.getroottree().getroot()
    use_ssl = _flag(values, "UseSsl", True)
    port = _optional(values, "Port")
    ca_file = _optional(values, "CaFile")
    return ListenerConfig(
        id=block.get("ID", "").strip(),
        host=_text(values["HostName"]),
        port=int(port) if port is not None else (993 if use_ssl else 143),
        username=_text(values["UserName"]),
        password=Secret(_secret(values["Password"], root, config_path))
        if "Password" in values
        else Secret(""),
        use_ssl=use_ssl,
        source_line=_line(block),
        output_folder=_optional(values, "OutputFolder"),
        error_folder=_optional(values, "ErrorFolder"),
        case_process=_optional(values, "CaseProcess"),
        protocol_log_file=_protocol_log_path(config_path, _optional(values, "ProtocolLogFile")),
        ca_file=_relative_to(config_path, ca_file) if ca_file is not None else None,
        acknowledgement=ack_config(
            values["Acknowledgement"],
            config_path,
            _text(values["UserName"]),
            key_path(root, config_path),
        )
        if "Acknowledgement" in values
        else None,
        authentication=auth_config(
            values["Authentication"], config_path, key_path(root, config_path)
        )
        if "Authentication" in values
        else None,
        rules=rules_config(values["Rules"]) if "Rules" in values else (),
        webhook=_webhook(values, root, config_path),
        **_given(values),
    )


def _webhook(
    values: dict[str, etree._Element], root: etree._Element, path: Path
) -> WebhookConfig | None:
    """A listener's Webhook: its own, else the one at the top of the file, else None."""
    node = values.get("Webhook", _values(root).get("Webhook"))
    return webhook_config(node, path, key_path(root, path)) if node is not None else None


def _boolean(value: str) -> bool:
    return value.lower() == "true"


# Elements whose value only needs converting: element -> (field, conversion). An element
# that is absent leaves the field's default (config.model), defined there once.
_CONVERTED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "InputFolder": ("input_folder", str),
    "ExtractAttachments": ("extract_attachments", _boolean),
    "SyncMaxWaitTime": ("sync_max_wait_time", int),
    "SyncMaxChangesCount": ("sync_max_changes_count", int),
    "Enabled": ("enabled", _boolean),
    "UnknownSender": ("unknown_sender", str),
    "DefaultCustomerId": ("default_customer_id", int),
    "AutomaticMail": ("automatic_mail", str),
    "SubjectPrefixes": (
        "subject_prefixes",
        lambda v: tuple(p.strip() for p in v.split(",") if p.strip()),
    ),
    "RoutingTimeout": ("routing_timeout", int),
    "MaxAttempts": ("max_attempts", int),
    "ReadFromDate": ("read_from_date", dt.date.fromisoformat),
    "TimeZone": ("time_zone", str),
    "RequireApproval": ("require_approval", _boolean),
    "ProtocolLogBodies": ("protocol_log_bodies", _boolean),
    "ProtocolLogMaxSize": ("protocol_log_max_size", int),
    "ProtocolLogKeep": ("protocol_log_keep", int),
    "ProtocolLogKeepDays": ("protocol_log_keep_days", int),
    "AllowPlaintextLogin": ("allow_plaintext_login", _boolean),
    "MaxMessageSize": ("max_message_size", int),
    "FollowUpsFrom": ("follow_ups_from", str),
    "ReopenDays": ("reopen_days", int),
    "CustomerFrom": ("customer_from", str),
    "LeaveOnServer": ("leave_on_server", _boolean),
    "PollSeconds": ("poll_seconds", int),
}


def _given(values: dict[str, etree._Element]) -> dict[str, Any]:
    """The fields of the elements present in a listener block, converted."""
    found: dict[str, Any] = {}
    for element, (name, convert) in _CONVERTED.items():
        value = _optional(values, element)
        if value:  # absent or empty: the default
            found[name] = convert(value)
    hook = values.get("RoutingHook")
    if hook is not None:
        found["routing_hook"], found["routing_hook_line"] = _text(hook), _line(hook)
    return found


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


def _pop3(block: etree._Element, config_path: Path) -> ListenerConfig:
    """A Pop3Listener block: the same settings, POP3 port defaults, LeaveOnServer."""
    values = _values(block)
    cfg = _listener(block, config_path)
    port = _optional(values, "Port")
    return replace(
        cfg, protocol="pop3", port=int(port) if port is not None else (995 if cfg.use_ssl else 110)
    )


def _graph(block: etree._Element, config_path: Path) -> ListenerConfig:
    """A GraphListener block: Mailbox for UserName, the endpoint's host for HostName."""
    values = _values(block)
    root = block.getroottree().getroot()
    mailbox = _text(values["Mailbox"])
    given = _given(values)
    given.setdefault("input_folder", DEFAULT_GRAPH_INPUT_FOLDER)
    endpoint = _optional(values, "GraphEndpoint")
    if endpoint:
        given["graph_endpoint"] = endpoint.rstrip("/")
    ca_file = _optional(values, "CaFile")
    keys = key_path(root, config_path)
    where = urlsplit(given.get("graph_endpoint", DEFAULT_GRAPH_ENDPOINT))
    return ListenerConfig(
        id=block.get("ID", "").strip(),
        host=where.hostname or "",
        port=where.port or 443,
        username=mailbox,
        password=Secret(""),
        use_ssl=True,
        source_line=_line(block),
        protocol="graph",
        output_folder=_optional(values, "OutputFolder"),
        error_folder=_optional(values, "ErrorFolder"),
        case_process=_optional(values, "CaseProcess"),
        protocol_log_file=_protocol_log_path(config_path, _optional(values, "ProtocolLogFile")),
        ca_file=_relative_to(config_path, ca_file) if ca_file is not None else None,
        acknowledgement=ack_config(values["Acknowledgement"], config_path, mailbox, keys)
        if "Acknowledgement" in values
        else None,
        authentication=auth_config(values["Authentication"], config_path, keys),
        rules=rules_config(values["Rules"]) if "Rules" in values else (),
        webhook=_webhook(values, root, config_path),
        **given,
    )


def _build_config(root: etree._Element, path: Path) -> Config:
    """The Config of a valid tree."""
    blocks = _values(root)
    process = _values(blocks["Process"]) if "Process" in blocks else {}
    return Config(
        path=path,
        imap_listeners=tuple(_listener(b, path) for b in root.iterchildren("ImapListener")),
        use_imap_listener=_flag(process, "UseImapListener", False),
        pop3_listeners=tuple(_pop3(b, path) for b in root.iterchildren("Pop3Listener")),
        use_pop3_listener=_flag(process, "UsePop3Listener", False),
        graph_listeners=tuple(_graph(b, path) for b in root.iterchildren("GraphListener")),
        use_graph_listener=_flag(process, "UseGraphListener", False),
        metrics=_metrics(blocks["Metrics"]) if "Metrics" in blocks else None,
        **({"workers": int(_text(process["Workers"]))} if "Workers" in process else {}),
        notices=_password_notices(root, path),
        webhook=webhook_config(blocks["Webhook"], path, key_path(root, path))
        if "Webhook" in blocks
        else None,
        store=(
            store_config(blocks["Store"], path, lambda node: _secret(node, root, path))
            if "Store" in blocks
            else StoreConfig(DEFAULT_STORE_PATH)
        ),
    )
