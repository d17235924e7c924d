"""`attachments save CASE_ID --to DIR`: a case's attachments written as files in DIR.

Attachment names come from whoever sent the mail. Each is made safe again here with
`mail.fields.sanitize_filename` (no path parts, no `..`, no control or reserved
characters, at most 255 bytes), whatever the store holds (mails stored by older
versions, or another store's rows).

Decisions:

* Files are created inside DIR through a descriptor of DIR (`dir_fd`) with a name that
  holds no separator, and with O_EXCL|O_NOFOLLOW: nothing is ever written outside DIR,
  through a symbolic link, or over a file that is already there. A name taken (by an
  earlier save, or by a case-insensitive file system) becomes `name (2).ext`.
* Files are created 0600: attachments are customers' documents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engage_listener.errors import EngageError
from engage_listener.mail.fields import sanitize_filename
from engage_listener.store.interface import Store, StoredAttachment

__all__ = ["Saved", "save_attachments"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Saved:
    """One attachment written: its id, the name it had in the mail, the file written."""

    attachment_id: int
    message_row: int
    original_name: str
    path: str
    size: int


async def save_attachments(store: Store, case_id: int, directory: Path) -> list[Saved]:
    """Write every attachment of the case into `directory` (created if missing)."""
    if await store.case_detail(case_id) is None:
        raise EngageError(f"no case {case_id}")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise EngageError(f"cannot use {directory} for attachments: {exc.strerror}") from exc
    try:
        used = set(os.listdir(dir_fd))
        numbers: dict[str, int] = {}
        saved: list[Saved] = []
        for item in await store.case_attachments(case_id):
            content = await store.attachment_content(item.id) or b""
            path = _write(dir_fd, directory, item, content, used, numbers)
            saved.append(Saved(item.id, item.message_row, item.filename, str(path), len(content)))
        return saved
    finally:
        os.close(dir_fd)


def _write(
    dir_fd: int,
    directory: Path,
    item: StoredAttachment,
    content: bytes,
    used: set[str],
    numbers: dict[str, int],
) -> Path:
    """Create a new file for the attachment under a free safe name, and fill it."""
    while True:
        name = sanitize_filename(item.filename, used, item.content_type, numbers)
        if "/" in name or "\x00" in name or name in (".", ".."):  # sanitize_filename's promise
            raise EngageError(f"attachment {item.id}: unsafe name {name!r}")
        try:
            fd = os.open(name, _FLAGS, 0o600, dir_fd=dir_fd)
        except FileExistsError:  # made meanwhile, or the same name in another case
            continue  # `used` holds it now: the next try is `name (n)`
        except OSError as exc:
            raise EngageError(f"cannot write {directory / name}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        return directory / name
