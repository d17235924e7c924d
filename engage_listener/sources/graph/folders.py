"""Finding (and making) a Graph mail folder by the path an operator writes.

`InputFolder`, `OutputFolder` and `ErrorFolder` are paths of display names from the top
of the mailbox (``Inbox/New``) or a well-known name (``inbox``, ``archive``): Graph
addresses folders by opaque ids, so each path is resolved to an id once per connection.

Decisions:

* A first segment that is a well-known name (``Inbox``, ``Archive``...) is taken as that
  folder, whatever its display name: a German mailbox calls its inbox "Posteingang", and
  ``Inbox/New`` must still mean the folder New under it. Other segments match display
  names case-insensitively, as Outlook does when it refuses a second "new" beside "New".
* Only the error folder is created when missing (a quarantined mail must go somewhere);
  an input or output folder that is not there is a `FolderMissingError`, as for IMAP.
"""

from __future__ import annotations

from typing import Any

from engage_listener.errors import FolderMissingError
from engage_listener.sources.graph.answers import GraphNotFound
from engage_listener.sources.graph.http import GraphSession

WELL_KNOWN = frozenset(
    {
        "inbox", "archive", "deleteditems", "drafts", "sentitems", "junkemail", "outbox",
        "msgfolderroot", "clutter", "conversationhistory", "scheduled", "searchfolders",
    }
)  # fmt: skip
_ROOT = "msgfolderroot"


def segments(path: str) -> list[str]:
    """The display names of a path, without empty parts (``/Inbox//New/`` is Inbox, New)."""
    return [part.strip() for part in path.replace("\\", "/").split("/") if part.strip()]


async def _children(session: GraphSession, parent: str) -> list[dict[str, Any]]:
    """Every child folder of `parent` (an id or well-known name), all pages."""
    where = f"{session.base}/mailFolders/{parent}/childFolders"
    params = {"$top": "100", "$select": "id,displayName"}
    found: list[dict[str, Any]] = []
    async for page in session.pages(where, params):
        found.extend(row for row in page.get("value", []) if isinstance(row, dict))
    return found


async def _child(session: GraphSession, parent: str, name: str) -> str | None:
    for row in await _children(session, parent):
        if str(row.get("displayName", "")).lower() == name.lower():
            return str(row["id"])
    return None


async def _start(session: GraphSession, first: str) -> tuple[str, bool]:
    """(id of the first segment's folder or of the root, whether the segment was used)."""
    if first.lower() in WELL_KNOWN:
        try:
            data = await session.get_json(f"{session.base}/mailFolders/{first.lower()}")
            return str(data["id"]), True
        except GraphNotFound:
            pass  # e.g. no archive folder: maybe a folder of that display name
    return _ROOT, False


async def find_folder(session: GraphSession, path: str) -> str | None:
    """The id of the folder at `path`, or None when some part of it does not exist."""
    names = segments(path)
    if not names:
        return None
    node, used = await _start(session, names[0])
    for name in names[1:] if used else names:
        child = await _child(session, node, name)
        if child is None:
            return None
        node = child
    return node


async def resolve_folder(session: GraphSession, path: str, what: str) -> str:
    """The id of an existing folder; `FolderMissingError` naming `what` otherwise."""
    found = await find_folder(session, path)
    if found is None:
        raise FolderMissingError(f"{what} {path!r} does not exist in mailbox {session.mailbox}")
    return found


async def ensure_folder(session: GraphSession, path: str) -> tuple[str, bool]:
    """(id of the folder at `path`, whether anything was created): missing parts are made."""
    names = segments(path)
    if not names:
        raise FolderMissingError("an empty folder path")
    node, used = await _start(session, names[0])
    created = False
    for name in names[1:] if used else names:
        child = await _child(session, node, name)
        if child is None:
            made = await session.post_json(
                f"{session.base}/mailFolders/{node}/childFolders", {"displayName": name}
            )
            child, created = str(made["id"]), True
        node = child
    return node, created


def sibling(path: str, name: str) -> str:
    """`name` beside the folder at `path` (``Inbox/New`` -> ``Inbox/Error``; ``Inbox`` ->
    ``Error`` at the top, as IMAP puts it beside INBOX)."""
    names = segments(path)
    return "/".join([*names[:-1], name]) if len(names) > 1 else name
