"""`engage-listener rules test FILE.eml`: what a listener's Rules decide for one mail.

Operators write rules in the XML and need to see, before a real mail arrives, which
rules a mail matches and what the outcome is. This reads the .eml, parses it with the
daemon's own parser, builds the same view the engine gives the rules (`cases.rules`),
and reports each rule (matched, no match with the first Match that failed, or not
reached after a Stop/Discard/Quarantine) and the final decision. Nothing is written:
no store is opened.

Decisions: the listener defaults to the first one (IMAP, then POP3, in file order) that
has rules; a configuration without any rules is an error, since nothing could be shown.
Mail text in the report (addresses, subject) comes from the sender, so the text form
passes every value through `terminal.visible`, and the JSON form through `json_text`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engage_listener.cases.rules import (
    MailView,
    RuleOutcome,
    evaluate,
    listener_addresses,
    mail_view,
    matches,
)
from engage_listener.config.model import (
    Config,
    Discard,
    ListenerConfig,
    Quarantine,
    RuleConfig,
    Stop,
)
from engage_listener.errors import EngageError
from engage_listener.mail.parser import parse
from engage_listener.ops.terminal import json_text, visible


@dataclass(frozen=True)
class RuleResult:
    """One rule's fate on the mail."""

    name: str
    line: int
    result: str  # matched, no match, not reached
    failed_match_line: int | None = None  # the first Match that did not hold


@dataclass(frozen=True)
class RulesReport:
    file: str
    listener: str
    view: MailView
    rules: tuple[RuleResult, ...]
    decision: RuleOutcome


def pick_listener(config: Config, wanted: str | None) -> ListenerConfig:
    """The listener named, else the first one with rules."""
    if wanted is not None:
        found = next((c for c in config.listeners if c.id == wanted), None)
        if found is None:
            known = ", ".join(c.id for c in config.listeners)
            raise EngageError(f"no listener {wanted!r} in {config.path} (listeners: {known})")
        return found
    found = next((c for c in config.listeners if c.rules), None)
    if found is None:
        raise EngageError(f"no listener in {config.path} has Rules; nothing to test")
    return found


def run_rules(config: Config, path: Path, wanted: str | None = None) -> RulesReport:
    """Parse the mail at `path` and run the chosen listener's rules on it."""
    listener = pick_listener(config, wanted)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EngageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    view = mail_view(parse(raw), listener_addresses(listener))
    decision = evaluate(listener.rules, view)
    return RulesReport(str(path), listener.id, view, _results(listener.rules, view), decision)


def _results(rules: tuple[RuleConfig, ...], view: MailView) -> tuple[RuleResult, ...]:
    """Each rule's fate, found again rule by rule (the same `matches` evaluate uses)."""
    results: list[RuleResult] = []
    reached = True
    for rule in rules:
        if not reached:
            results.append(RuleResult(rule.name, rule.source_line, "not reached"))
            continue
        failed = next((m for m in rule.matches if not matches(m, view)), None)
        if failed is None:
            results.append(RuleResult(rule.name, rule.source_line, "matched"))
            reached = not any(isinstance(a, Discard | Quarantine | Stop) for a in rule.actions)
        else:
            results.append(RuleResult(rule.name, rule.source_line, "no match", failed.source_line))
    return tuple(results)


def _mail(view: MailView) -> dict[str, Any]:
    return {
        "from": view.from_.address if view.from_ else None,
        "from_name": view.from_.name if view.from_ else None,
        "to": [a.address for a in view.to],
        "cc": [a.address for a in view.cc],
        "delivered_to": view.delivered_to,
        "subject": view.subject,
    }


def render_json(report: RulesReport) -> str:
    """The report as one JSON document (terminal-safe)."""
    return json_text(
        {
            "file": report.file,
            "listener": report.listener,
            "mail": _mail(report.view),
            "rules": [asdict(r) for r in report.rules],
            "decision": asdict(report.decision),
        }
    )


def render_text(report: RulesReport) -> str:
    """The report as text; every value from the mail or the file made `visible`."""
    mail = _mail(report.view)
    if mail["from_name"]:
        mail["from"] = f"{mail['from_name']} <{mail['from']}>"
    lines = [f"mail {visible(report.file)}"]
    for key in ("from", "to", "cc", "delivered_to", "subject"):
        value = mail[key]
        shown = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"  {key.replace('_', '-'):<13} {visible(shown or '-')}")
    lines.append(f"listener {visible(report.listener)}: {len(report.rules)} rule(s)")
    lines.append(f"  {'LINE':>5}  {'RESULT':<12} RULE")
    for r in report.rules:
        why = f" (Match on line {r.failed_match_line})" if r.failed_match_line else ""
        lines.append(f"  {r.line:>5}  {r.result:<12} {visible(r.name)}{why}")
    lines.append("decision:")
    lines += [f"  {key:<13} {visible(value)}" for key, value in _decision(report.decision)]
    return "\n".join(lines)


def _decision(d: RuleOutcome) -> list[tuple[str, str]]:
    """The outcome's fields as text; '-' where no rule said anything."""
    return [
        ("matched", ", ".join(d.matched) or "-"),
        ("process", d.process or "-"),
        ("inbox", d.inbox or "-"),
        ("priority", "-" if d.priority is None else str(d.priority)),
        ("tags", ", ".join(d.tags) or "-"),
        ("acknowledge", "yes" if d.acknowledge else "no"),
        ("discard", "yes" if d.discard else "no"),
        ("quarantine", d.quarantine or "-"),
        ("stopped", "yes" if d.stopped else "no"),
    ]
