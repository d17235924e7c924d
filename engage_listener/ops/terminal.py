"""Text for the operator's terminal: control characters from mail made visible.

Subjects, names and addresses come from whoever sent the mail; printed raw, an
address carrying `ESC ] 0 ; ... BEL` retitled the operator's terminal and `ESC [ 2 J`
cleared it. Every CLI table and text output therefore passes cell values through
`visible`, which writes C0 and C1 controls (and DEL) as `\\x1b`-style escapes, even a
tab or a newline inside a cell, which would break the table's rows. Bidirectional
overrides (U+202A-U+202E, U+2066-U+2069) are escaped as `\\u202e` too: they reorder what
the operator reads (a subject showing a different address than it holds).

Decisions: the rows are cleaned (`visible_fields`), not the finished output, so the
layout's own newlines stay and any column another command adds is covered. JSON is
already safe from C0 controls (`json.dumps` escapes them), but with ensure_ascii=False
it writes C1 controls and bidi overrides raw; `json_text` escapes those as `\\u0085`,
which is the same JSON string.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

T = TypeVar("T")

_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_VISIBLE = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}
_VISIBLE_LINES = {c: v for c, v in _VISIBLE.items() if c != 0x0A}
_JSON = {c: f"\\u{c:04x}" for c in [0x7F, *range(0x80, 0xA0), *_BIDI]}


def visible(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`)."""
    return text.translate(_VISIBLE)


def visible_lines(text: str) -> str:
    """Like `visible`, but the text's own line breaks stay (multi-line output)."""
    return text.translate(_VISIBLE_LINES)


def visible_fields(row: T) -> T:
    """A dataclass row with each str field (and each str in a tuple or list) `visible`."""
    if not dataclasses.is_dataclass(row) or isinstance(row, type):
        return row
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        if isinstance(value, str):
            changes[field.name] = visible(value)
        elif isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
            changes[field.name] = type(value)(visible(v) for v in value)
    return dataclasses.replace(row, **changes)


def json_text(value: Any) -> str:
    """`json.dumps` for the terminal: UTF-8 kept, C1 controls and bidi overrides escaped."""
    return safe_json(json.dumps(value, ensure_ascii=False, indent=2))


def safe_json(text: str) -> str:
    """JSON text already made, with C1 controls and bidi overrides escaped (`\\u009b`)."""
    return text.translate(_JSON)
