"""The XML configuration, turned into frozen dataclasses in this one place.

The format is the original Engage Integration Service one, described by the shipped XSD.
Nothing here exits or prints: every problem found (syntax, schema, meaning) is collected
and raised at once as a ConfigError, so an operator fixes a file in one go. The XSD is
also read to word messages ("expected one of ..."), so adding an element there is enough
for the messages to follow.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, cast

from lxml import etree

from engage_listener import secrets
from engage_listener.config_ack import AckConfig, ack_config, ack_problems
from engage_listener.config_xml import children as _children
from engage_listener.config_xml import flag as _flag
from engage_listener.config_xml import line as _line
from engage_listener.config_xml import local as _local
from engage_listener.config_xml import optional as _optional
from engage_listener.config_xml import relative_to as _relative_to
from engage_listener.config_xml import text as _text
from engage_listener.config_xml import values as _values
from engage_listener.errors import ConfigError, ConfigProblem, SecretError

DEFAULT_STORE_PATH = Path("/var/lib/engage-listener/engage-listener.sqlite3")
_ROOT = "EngageIntegrationService"
_XS = {"xs": "http://www.w3.org/2001/XMLSchema"}
_SCHEMA_FILE = "engage-listener.xsd"
_MAX_PASSES = 50  # each validation pass removes at least one unexpected element


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
    protocol: str = "imap"  # "imap" or "pop3" (a Pop3Listener block)
    leave_on_server: bool = False  # POP3 only


@dataclass(frozen=True)
class StoreConfig:
    """Where the case store lives."""

    path: Path


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    path: Path
    imap_listeners: tuple[ImapListenerConfig, ...]
    use_imap_listener: bool
    store: StoreConfig
    pop3_listeners: tuple[ImapListenerConfig, ...] = ()
    use_pop3_listener: bool = False

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
        found: list[str] = []
        if not self.use_imap_listener and self.imap_listeners:
            found.append("IMAP listening is off: Process/UseImapListener is not True")
        if not self.use_pop3_listener and self.pop3_listeners:
            found.append("POP3 listening is off: Process/UsePop3Listener is not True")
        if self.listeners and not self.enabled_listeners():
            found.append("no listener will run: every one is disabled or switched off")
        for lst in self.listeners:
            found.extend(_listener_warnings(lst))
        return found


def _listener_warnings(lst: ImapListenerConfig) -> list[str]:
    """Warnings for one listener; a disabled one only says so."""
    if not lst.enabled:
        return [f"listener {lst.id}: disabled (Enabled is False)"]
    found: list[str] = []
    if lst.protocol == "pop3":
        if lst.output_folder is not None:
            found.append(f"listener {lst.id}: POP3 cannot move mail, OutputFolder is ignored")
        if not lst.leave_on_server:
            found.append(f"listener {lst.id}: POP3 deletes processed mail from the server")
    elif lst.output_folder is None:
        found.append(f"listener {lst.id}: no OutputFolder, processed mail will be DELETED")
    if not lst.use_ssl:
        found.append(f"listener {lst.id}: UseSsl is False, {lst.host}:{lst.port} is not TLS")
    return found


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


def schema_path() -> Path:
    """The XSD shipped inside the package."""
    return Path(str(resources.files("engage_listener").joinpath(_SCHEMA_FILE)))


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
    root, problems = _parse_xml(data, file)
    if root is None:
        raise ConfigError(problems)
    problems = _schema_problems(root, file) + _semantic_problems(root, path)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return _build_config(root, path)


def _safe_parser() -> etree.XMLParser:
    """No entities, no DTD, no network: a config file must not read anything else."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _parse_xml(data: bytes, file: str) -> tuple[etree._Element | None, list[ConfigProblem]]:
    """Parse, refusing any DOCTYPE (entity expansion and external entities are attacks)."""
    parser = _safe_parser()
    doctype = ConfigProblem(file, _doctype_line(data), "DOCTYPE", "a DOCTYPE is not allowed")
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:  # libxml2 may refuse the DTD itself (amplification)
        found = [doctype] if b"<!DOCTYPE" in data else []
        return None, found + _syntax_problems(parser, exc, file)
    if root.getroottree().docinfo.internalDTD is not None:
        return None, [doctype]
    return root, []


def _syntax_problems(
    parser: etree.XMLParser, exc: etree.XMLSyntaxError, file: str
) -> list[ConfigProblem]:
    """One problem per syntax error libxml2 reported before giving up."""
    problems = [
        ConfigProblem(file, entry.line, "xml", f"malformed XML: {entry.message}")
        for entry in _entries(parser.error_log)
        if entry.level_name in ("ERROR", "FATAL")
    ]
    return problems or [ConfigProblem(file, exc.lineno or 0, "xml", f"malformed XML: {exc.msg}")]


def _doctype_line(data: bytes) -> int:
    """Line of the DOCTYPE, found in the raw bytes (libxml2 does not keep it)."""
    at = data.find(b"<!DOCTYPE")
    return data.count(b"\n", 0, at) + 1 if at >= 0 else 1


class _LogEntry(Protocol):
    """The part of lxml's _LogEntry we use (lxml-stubs leaves it untyped)."""

    line: int
    message: str
    path: str | None
    level_name: str


def _entries(log: object) -> list[_LogEntry]:
    """lxml's error log, typed."""
    return list(cast(Iterable[_LogEntry], log))


@dataclass(frozen=True)
class _Model:
    """What the XSD allows under each element, read from the XSD itself."""

    allowed: dict[str, tuple[str, ...]]
    required: dict[str, tuple[tuple[str, ...], ...]]  # each entry: one of these names
    type_docs: dict[str, str]


@lru_cache(maxsize=1)
def _xsd_root() -> etree._Element:
    """The shipped XSD, parsed once; read through importlib so zipped installs work."""
    data = resources.files("engage_listener").joinpath(_SCHEMA_FILE).read_bytes()
    return etree.fromstring(data, _safe_parser())


@lru_cache(maxsize=1)
def _model() -> _Model:
    """Index the XSD: children allowed and required per element, and simple-type wording."""
    xsd = _xsd_root()
    types = {t.get("name"): t for t in xsd.iterfind("xs:complexType", _XS)}
    groups = {g.get("name", ""): g for g in xsd.iterfind("xs:group", _XS)}
    allowed: dict[str, tuple[str, ...]] = {}
    required: dict[str, tuple[tuple[str, ...], ...]] = {}
    for decl in xsd.iterfind(".//xs:element[@name]", _XS):
        ctype = types.get(decl.get("type"))
        ctype = ctype if ctype is not None else decl.find("xs:complexType", _XS)
        if ctype is not None:
            allowed[decl.get("name", "")] = _names_under(ctype, groups)
            required[decl.get("name", "")] = _required_under(ctype, groups)
    docs = {
        s.get("name", ""): s.findtext("xs:annotation/xs:documentation", "", _XS)
        for s in xsd.iterfind("xs:simpleType", _XS)
    }
    return _Model(allowed, required, {k: " ".join(v.split()) for k, v in docs.items()})


def _names_under(node: etree._Element, groups: dict[str, etree._Element]) -> tuple[str, ...]:
    """Element names declared under node, following group references."""
    names: list[str] = []
    for item in node.iterdescendants("{*}element", "{*}group"):
        ref = groups.get(item.get("ref", ""))
        found = _names_under(ref, groups) if ref is not None else (item.get("name"),)
        names.extend(n for n in found if n and n not in names)
    return tuple(names)


def _required_under(
    ctype: etree._Element, groups: dict[str, etree._Element]
) -> tuple[tuple[str, ...], ...]:
    """Mandatory children: xs:all members and sequence groups without minOccurs=0."""
    found: list[tuple[str, ...]] = []
    paths = ("xs:all/xs:element", "xs:sequence/xs:group")
    for item in (it for path in paths for it in ctype.iterfind(path, _XS)):
        if item.get("minOccurs") == "0":
            continue
        ref = groups.get(item.get("ref", ""))
        found.append(_names_under(ref, groups) if ref is not None else (item.get("name", ""),))
    return tuple(found)


def _schema_problems(root: etree._Element, file: str) -> list[ConfigProblem]:
    """Validate, dropping unexpected elements and revalidating until nothing new shows.

    libxml2 stops checking a parent's children at the first unexpected one, so a single
    pass would hide the later problems of that block.
    """
    work = copy.deepcopy(root)
    schema = etree.XMLSchema(_xsd_root())
    found: dict[tuple[int, str, str], ConfigProblem] = {}
    for _ in range(_MAX_PASSES):
        schema.validate(work)
        unexpected: list[etree._Element] = []
        for entry in _entries(schema.error_log):
            node = _node_at(work, entry)
            problem = _schema_problem(file, entry, node)
            if problem is not None:
                found.setdefault((problem.line, problem.element, problem.message), problem)
            if node is not None and "This element is not expected" in entry.message:
                unexpected.append(node)
        if not unexpected:
            break
        for node in unexpected:  # never the root: a wrong root is another message
            cast(etree._Element, node.getparent()).remove(node)
    return list(found.values())


def _node_at(root: etree._Element, entry: _LogEntry) -> etree._Element | None:
    """The element a log entry is about: by libxml2's XPath, else by line and name."""
    try:
        hits = root.getroottree().xpath(entry.path or "/..")
    except etree.XPathError:  # e.g. a namespace prefix the XPath cannot resolve
        hits = []
    if isinstance(hits, list) and hits and isinstance(hits[0], etree._Element):
        return hits[0]
    match = _PREFIX.match(entry.message)
    name = _local(match.group("el")) if match else None
    nodes = (n for n in root.iter("*") if _line(n) == entry.line and _local(n.tag) == name)
    return next(nodes, None)


_PREFIX = re.compile(
    r"^Element '(?P<el>[^']*)'(?:, attribute '(?P<attr>[^']*)')?: (?P<rest>.*)$", re.S
)


def _schema_problem(
    file: str, entry: _LogEntry, node: etree._Element | None
) -> ConfigProblem | None:
    """Turn one libxml2 validation message into a readable problem (None: pure noise)."""
    match = _PREFIX.match(entry.message)
    rest = match.group("rest") if match else entry.message
    if "No precomputed value available" in rest:
        return None  # follows an invalid attribute already reported
    name = _local(node.tag) if node is not None else _local(match.group("el") if match else "-")
    text = _reword(rest.strip(), node)
    attr = match.group("attr") if match else None
    if attr and f"'{attr}'" not in text:
        text = f"attribute '{attr}' {text}"
    return ConfigProblem(file, entry.line, name, re.sub(r"\{[^}]*\}", "", text))


_FACETS: tuple[tuple[str, str], ...] = (  # libxml2 wording -> ours
    (r"\[facet 'minInclusive'\].*'(.*)' is less.*\('(.*)'\)", r"\1 is below the minimum \2"),
    (r"\[facet 'maxInclusive'\].*'(.*)' is greater.*\('(.*)'\)", r"\1 is above the maximum \2"),
    (r"\[facet 'minLength'\].*minimum length of '1'", "must not be empty"),
    (
        r"\[facet 'pattern'\] The value '(.*)' is not accepted .*\[Tt\]\[Rr\]",
        r"'\1' is not True or False",
    ),
    (r"The attribute '(.*)' is required but missing", r"attribute '\1' is required"),
    (r"The attribute '(.*)' is not allowed", r"unknown attribute '\1'"),
    (r"Duplicate key-sequence \['(.*)'\] in unique.*", r"duplicate ID '\1'; IDs must be unique"),
    (r"Character content other than whitespace .*", "text is not allowed here, only elements"),
    (r"No matching global declaration .*", f"the root element must be {_ROOT}"),
)


def _reword(rest: str, node: etree._Element | None) -> str:
    """Say what libxml2 means, in the words of the configuration format."""
    if rest.startswith("This element is not expected"):
        return _unexpected(node) if node is not None else rest
    if rest.startswith("Missing child element(s)"):
        return _missing(node) if node is not None else rest
    atomic = re.match(r"'(.*)' is not a valid value of the atomic type '(.*)'", rest, re.S)
    if atomic:
        wording = _model().type_docs.get(atomic.group(2)) or atomic.group(2)
        wording = wording[:1].lower() + wording[1:].rstrip(".")
        return f"'{atomic.group(1)}' is not valid; expected {wording}"
    for pattern, template in _FACETS:
        found = re.match(pattern, rest, re.S)
        if found:
            return found.expand(template)
    return rest.rstrip(".")


def _unexpected(node: etree._Element) -> str:
    """An unknown, repeated or misplaced element, with what is allowed instead."""
    parent = node.getparent()
    parent_name = _local(parent.tag) if parent is not None else ""
    allowed = _model().allowed.get(parent_name, ())
    name = _local(node.tag)
    if name in allowed:
        return f"'{name}' appears more than once in {parent_name}"
    known = any(name in names for names in _model().allowed.values())
    kind = "misplaced" if known else "unknown"
    return f"{kind} element '{name}'; expected one of {', '.join(allowed)}"


def _missing(node: etree._Element) -> str:
    """Which mandatory children are absent (libxml2 lists optional ones too)."""
    present = {_local(c.tag) for c in _children(node)}
    absent = [
        " or ".join(alts)
        for alts in _model().required.get(_local(node.tag), ())
        if not present.intersection(alts)
    ]
    return f"missing required element(s): {', '.join(absent) or 'see the schema'}"


def _semantic_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
    """What the XSD cannot say; tolerant of invalid trees so all problems come out at once."""
    file = str(path)
    problems: list[ConfigProblem] = []
    problems.extend(_secret_problems(root, path))
    for name in ("Process", "Store", "Secrets"):
        for extra in list(root.iterchildren(name))[1:]:
            problems.append(ConfigProblem(file, _line(extra), name, "only one is allowed"))
    for block in root.iterchildren("ImapListener", "Pop3Listener"):
        problems.extend(_listener_problems(_values(block), path))
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
        problems.extend(ack_problems(values["Acknowledgement"], path))
    ca = values.get("CaFile")
    if ca is not None and _text(ca) and not _relative_to(path, _text(ca)).is_file():
        message = f"CA file {_relative_to(path, _text(ca))} does not exist"
        problems.append(ConfigProblem(file, _line(ca), "CaFile", message))
    return problems


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
        password=Secret(_secret(values["Password"], block.getroottree().getroot(), config_path)),
        use_ssl=use_ssl,
        input_folder=_optional(values, "InputFolder") or "INBOX",
        output_folder=_optional(values, "OutputFolder"),
        extract_attachments=_flag(values, "ExtractAttachments", False),
        sync_max_wait_time=int(_optional(values, "SyncMaxWaitTime") or 60),
        sync_max_changes_count=int(_optional(values, "SyncMaxChangesCount") or 10),
        protocol_log_file=_optional(values, "ProtocolLogFile"),
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
        "protocol_log_bodies": _flag(values, "ProtocolLogBodies", False),
        "protocol_log_max_size": int(_optional(values, "ProtocolLogMaxSize") or 10 * 1024 * 1024),
        "protocol_log_keep": int(_optional(values, "ProtocolLogKeep") or 5),
    }


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
        store=StoreConfig(_relative_to(path, store) if store else DEFAULT_STORE_PATH),
    )
