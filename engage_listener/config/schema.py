"""XML parsing and XSD validation of the configuration, with readable messages.

Part of `config`: it turns lxml's syntax and schema errors into ConfigProblems that
name the file, line and element, and reads the shipped XSD to word them ("expected one
of ..."), so adding an element to the XSD is enough for the messages to follow.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol, cast

from lxml import etree

from engage_listener.config.ews import graph_hint
from engage_listener.config.xmltree import children as _children
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import local as _local
from engage_listener.errors import ConfigProblem

_ROOT = "EngageIntegrationService"
_XS = {"xs": "http://www.w3.org/2001/XMLSchema"}
_SCHEMA_FILE = "engage-listener.xsd"
_MAX_PASSES = 50  # each validation pass removes at least one unexpected element


def schema_path() -> Path:
    """The XSD shipped inside the package."""
    return Path(str(resources.files("engage_listener.config").joinpath(_SCHEMA_FILE)))


def _safe_parser() -> etree.XMLParser:
    """No entities, no DTD, no network: a config file must not read anything else."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def parse_xml(data: bytes, file: str) -> tuple[etree._Element | None, list[ConfigProblem]]:
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
    data = resources.files("engage_listener.config").joinpath(_SCHEMA_FILE).read_bytes()
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


def schema_problems(root: etree._Element, file: str) -> list[ConfigProblem]:
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
        r"\[facet 'enumeration'\] The value '(.*)' is not an element of the set \{(.*)\}",
        r"'\1' is not valid; expected one of \2",
    ),
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
    text = f"{kind} element '{name}'; expected one of {', '.join(allowed)}"
    hint = graph_hint(name) if parent_name == "GraphListener" else None
    return f"{text}. Coming from EWS or IMAP: {hint}" if hint else text


def _missing(node: etree._Element) -> str:
    """Which mandatory children are absent (libxml2 lists optional ones too)."""
    present = {_local(c.tag) for c in _children(node)}
    absent = [
        " or ".join(alts)
        for alts in _model().required.get(_local(node.tag), ())
        if not present.intersection(alts)
    ]
    return f"missing required element(s): {', '.join(absent) or 'see the schema'}"
