"""Small helpers for reading the configuration's XML tree (shared by the config modules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

from lxml import etree

from engage_listener.config import secret_refs as secrets


def local(tag: object) -> str:
    """Local name of a tag, without {namespace}."""
    return str(tag).rsplit("}", 1)[-1]


def children(node: etree._Element) -> Iterator[etree._Element]:
    """Child elements, skipping comments and processing instructions."""
    return (c for c in node if isinstance(c.tag, str))


def text(node: etree._Element) -> str:
    """Text of an element, comments skipped, surrounding whitespace trimmed."""
    return "".join(cast(Iterator[str], node.itertext())).strip()


def line(node: etree._Element) -> int:
    return int(cast(int | None, node.sourceline) or 0)


def values(block: etree._Element) -> dict[str, etree._Element]:
    """A block's children by name; the first wins (repeats are schema errors)."""
    found: dict[str, etree._Element] = {}
    for child in children(block):
        found.setdefault(local(child.tag), child)
    return found


def relative_to(config_path: Path, value: str) -> Path:
    """A path from the file, relative ones taken from the configuration's directory."""
    return config_path.absolute().parent / Path(value).expanduser()


def ca_file_problem(config_path: Path, value: str) -> str | None:
    """Why the CA file `value` cannot be used (None when it can be read).

    Checked by opening it: the daemon often runs as another user than the one who
    wrote the file, and "does not exist" would be the wrong advice then.
    """
    ca = relative_to(config_path, value)
    try:
        with ca.open("rb"):
            return None
    except FileNotFoundError:
        return f"CA file {ca} does not exist"
    except IsADirectoryError:
        return f"CA file {ca} is a directory"
    except OSError as exc:
        return f"CA file {ca} cannot be read: {exc.strerror}"


def flag(values: dict[str, etree._Element], name: str, default: bool) -> bool:
    node = values.get(name)
    return default if node is None else text(node).lower() == "true"


def optional(values: dict[str, etree._Element], name: str) -> str | None:
    node = values.get(name)
    return None if node is None else text(node)


def secret_value(node: etree._Element, path: Path, key_path: Path | None) -> str:
    """A secret element's value (plain, enc:, env:, file:...; see `secret_refs`), a
    relative file: reference taken from the configuration file's directory."""
    return secrets.resolve(text(node), key_path=key_path, base_dir=path.absolute().parent)
