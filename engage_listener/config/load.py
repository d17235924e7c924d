"""Loading the XML configuration into the frozen model (`config.model`), in this one place.

The format is the original Engage Integration Service one, described by the shipped XSD.
Nothing here exits or prints: every problem found (syntax, schema, meaning) is collected
and raised at once as a ConfigError, so an operator fixes a file in one go. The XSD is
also read to word messages ("expected one of ..."), so adding an element there is enough
for the messages to follow. The meaning checks (what the XSD cannot say) are `checks`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from engage_listener.config.ack import ack_config
from engage_listener.config.auth import auth_config
from engage_listener.config.checks import (
    key_path,
    password_notices,
    resolve_secret,
    semantic_problems,
)
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
from engage_listener.config.rules import rules_config
from engage_listener.config.schema import parse_xml, schema_problems
from engage_listener.config.store import store_config
from engage_listener.config.webhook import WebhookConfig, webhook_config
from engage_listener.config.xmltree import flag as _flag
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import optional as _optional
from engage_listener.config.xmltree import relative_to as _relative_to
from engage_listener.config.xmltree import text as _text
from engage_listener.config.xmltree import values as _values
from engage_listener.errors import ConfigError, ConfigProblem


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
    problems = schema_problems(root, file) + semantic_problems(root, path)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return _build_config(root, path)


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
        password=Secret(resolve_secret(values["Password"], root, config_path))
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
        notices=password_notices(root, path),
        webhook=webhook_config(blocks["Webhook"], path, key_path(root, path))
        if "Webhook" in blocks
        else None,
        store=(
            store_config(blocks["Store"], path, lambda node: resolve_secret(node, root, path))
            if "Store" in blocks
            else StoreConfig(DEFAULT_STORE_PATH)
        ),
    )
