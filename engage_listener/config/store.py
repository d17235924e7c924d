"""The Store block: a SQLite file (`Path`) or a PostgreSQL database (`Url`, issue 16).

Decisions:

* Exactly one of Path and Url: a file with both would leave the reader guessing which
  store holds the cases, and one with neither means the block was left half-written.
* The Url is handed to libpq as it is (every libpq parameter works); only the password
  may come from a secret reference (`Password`), and both are registered as secrets so no
  log line or error shows them (`StoreConfig.where` masks the URL for display).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxml import etree

from engage_listener.config.model import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_STORE_PATH,
    Secret,
    StoreConfig,
)
from engage_listener.config.xmltree import ca_file_problem
from engage_listener.config.xmltree import line as _line
from engage_listener.config.xmltree import optional as _optional
from engage_listener.config.xmltree import relative_to as _relative_to
from engage_listener.config.xmltree import text as _text
from engage_listener.config.xmltree import values as _values
from engage_listener.errors import ConfigProblem
from engage_listener.observe.logs import register_secret

_PG_URL = re.compile(r"^postgres(ql)?://\S*$", re.IGNORECASE)


def store_config(
    block: etree._Element, path: Path, secret: Callable[[etree._Element], str]
) -> StoreConfig:
    """SQLite at `Path`, or PostgreSQL at `Url` (with its Password, CaFile, LeaseSeconds)."""
    found = _values(block)
    lease = _optional(found, "LeaseSeconds")
    lease_seconds = int(lease) if lease else DEFAULT_LEASE_SECONDS
    if "Url" not in found:
        store = _optional(found, "Path")
        where = _relative_to(path, store) if store else DEFAULT_STORE_PATH
        return StoreConfig(where, lease_seconds=lease_seconds)
    password = found.get("Password")
    url, ca_file = _text(found["Url"]), _optional(found, "CaFile")
    with suppress(ValueError):  # a password written in the URL itself: never logged either
        register_secret(unquote(urlsplit(url).password or ""))
    return StoreConfig(
        DEFAULT_STORE_PATH,
        url=url,
        password=Secret(secret(password)) if password is not None else None,
        ca_file=_relative_to(path, ca_file) if ca_file else None,
        lease_seconds=lease_seconds,
    )


def store_problems(root: etree._Element, path: Path) -> list[ConfigProblem]:
    """Exactly one of Path (SQLite) and Url (PostgreSQL); a Url that is a libpq URL; the
    PostgreSQL-only elements only with a Url."""
    file = str(path)
    problems: list[ConfigProblem] = []
    for block in root.iterchildren("Store"):
        found = _values(block)
        if ("Path" in found) == ("Url" in found):
            what = "both Path and Url" if "Path" in found else "neither Path nor Url"
            message = f"has {what}: give exactly one, Path (SQLite) or Url (PostgreSQL)"
            problems.append(ConfigProblem(file, _line(block), "Store", message))
        url = found.get("Url")
        if url is not None and not _PG_URL.match(_text(url)):
            message = "must be a libpq URL, postgresql://USER@HOST:PORT/DATABASE?PARAMS"
            problems.append(ConfigProblem(file, _line(url), "Url", message))
        for name in ("Password", "CaFile"):
            if name in found and url is None:
                message = f"{name} belongs to a PostgreSQL store (Url)"
                problems.append(ConfigProblem(file, _line(found[name]), name, message))
        ca = found.get("CaFile")
        if ca is not None and (ca_problem := ca_file_problem(path, _text(ca))):
            problems.append(ConfigProblem(file, _line(ca), "CaFile", ca_problem))
    return problems
