"""The acknowledgement template language: its placeholders, the default text, its check.

Configuration (templates are read and checked with the XML); the case engine fills them
(`cases.ack`). Decisions: ``str.format`` syntax over PLACEHOLDERS only, values formatted
as plain strings and never parsed, so a subject ``{x}`` is harmless.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

PLACEHOLDERS: frozenset[str] = frozenset(
    {"case_number", "case_token", "subject", "customer_name", "received_at", "sender"}
)


@dataclass(frozen=True)
class AckTemplate:
    """Subject, plain-text body and optional HTML body, in ``str.format`` syntax."""

    subject: str
    text: str
    html: str | None = None


DEFAULT_TEMPLATE = AckTemplate(
    subject="{case_token} Hemos recibido su mensaje / We have received your message: {subject}",
    text=(
        "Estimado/a {customer_name}:\n\n"
        "Hemos recibido su mensaje del {received_at} con el asunto «{subject}» y hemos "
        "abierto el caso número {case_number}.\n"
        "Si desea añadir información, responda a este correo sin quitar {case_token} "
        "del asunto.\n\n"
        "Dear {customer_name},\n\n"
        'We have received your message of {received_at} with the subject "{subject}" '
        "and opened case number {case_number}.\n"
        "To add information, reply to this email keeping {case_token} in the subject.\n\n"
        "-- \n"
        "Este es un mensaje automático. / This is an automated message.\n"
    ),
)


def _field_problems(label: str, text: str) -> list[str]:
    """Unknown or unsafe fields in one template part."""
    problems: list[str] = []
    for _literal, name, _spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join(sorted(PLACEHOLDERS))
            problems.append(f"{label}: unknown placeholder {{{name}}} (known: {known})")
        elif conversion:
            problems.append(f"{label}: placeholder {{{name}}} must not use !{conversion}")
    return problems


def template_problems(template: AckTemplate) -> list[str]:
    """Everything wrong with a template, for the configuration check (empty = usable)."""
    parts = [("subject", template.subject), ("text", template.text)]
    if template.html is not None:
        parts.append(("html", template.html))
    problems: list[str] = []
    for label, text in parts:
        try:
            found = _field_problems(label, text)
            if not found:
                substitute(text, dict.fromkeys(PLACEHOLDERS, "x"))
        except ValueError as exc:
            found = [f"{label}: bad template syntax: {exc}"]
        problems.extend(found)
    if not template.subject.strip():
        problems.append("subject: empty")
    return problems


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Fill ``text``; values are formatted as plain strings, never parsed."""
    out: list[str] = []
    for literal, name, spec, _conversion in string.Formatter().parse(text):
        out.append(literal)
        if name is not None:
            out.append(format(values.get(name, ""), spec or ""))
    return "".join(out)
