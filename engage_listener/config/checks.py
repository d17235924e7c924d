"""What the XSD cannot say about a configuration: the meaning checks `load` runs after
the schema, and the secrets they resolve on the way.

Decisions: apart from `load` (which turns a valid tree into the model) for size and
because the two change for different reasons; every check is tolerant of an invalid tree,
so all problems come out at once. `key_path` and `resolve_secret` live here since the
checks resolve every Password (a wrong key is a problem, not a crash) and `load` then
resolves them again the same way.
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path

from lxml import etree

from engage_listener.config import secret_refs as secrets
from engage_listener.config.ack import ack_problems
from engage_listener.config.auth import auth_problems, password_problem
from engage_listener.config.model import DEFAULT_GRAPH_INPUT_FOLDER
from engage_listener.config.rules import rules_problems
from engage_listener.config.store import store_problems
from engage_listener.config.webhook import webhook_problems
from engage_listener.config.xmltree import ca_file_problem, secret_value
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import optional as _optional
from engage_listener.config.xmltree import relative_to as _relative_to
from engage_listener.config.xmltree import text as _text
from engage_listener.config.xmltree import values as _values
from engage_listener.errors import ConfigProblem, SecretError


def semantic_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
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


def resolve_secret(node: etree._Element, root: etree._Element, path: Path) -> str:
    """A Password/secret element's value (enc:, env:, file:...), with the file's key."""
    return secret_value(node, path, key_path(root, path))


def _secret_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
    """Every Password that cannot be resolved (wrong key, tampered, missing env/file)."""
    problems: list[ConfigProblem] = []
    for node in root.iter("Password"):
        try:
            resolve_secret(node, root, path)
        except SecretError as exc:
            problems.append(ConfigProblem(str(path), _line(node), "Password", str(exc)))
    return problems


def password_notices(root: etree._Element, path: Path) -> tuple[str, ...]:
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


def _windows_path(value: str) -> bool:
    """`C:\\...`, `C:/...` or `\\\\server\\share`: paths of the original Windows service."""
    return bool(re.match(r"^([A-Za-z]:[\\/]|\\\\)", value))
