"""The rows one mail becomes in the store: its message (`new_message`) and its
attachments (`add_attachments`), as ExtractAttachments says.

Decisions: apart from `engine` for size; both the ingest and the quarantine paths build
the message the same way, so it is one function of the settings, not of the engine.
"""

from __future__ import annotations

import datetime as dt
import re

from engage_listener.cases.settings import EngineSettings
from engage_listener.mail import parser
from engage_listener.mail.parse_pool import Prepared
from engage_listener.store.interface import NewAttachment, NewMessage, Transaction


def new_message(
    settings: EngineSettings,
    raw: bytes,
    ready: Prepared,
    automatic: str | None,
    text_new: str | None = None,
) -> NewMessage:
    """The message row of a mail (the body stripped of attachments kept only when it differs)."""
    mail = ready.mail
    sender = mail.sender or parser.Address("", "")
    stored = mail.stripped if settings.extract_attachments else None
    if stored is not None and (stored is raw or stored == raw):
        stored = None  # nothing was removed: the stored body is the raw mail, kept once
    return NewMessage(
        listener=settings.listener,
        message_id=mail.message_id,
        in_reply_to=mail.in_reply_to,
        sender=sender.address,
        sender_name=sender.name,
        subject=mail.subject,
        sent_at=mail.date,
        received_at=dt.datetime.now(dt.UTC),
        sha256=ready.sha256,
        raw=raw,
        parsed=mail.parsed,
        body_text=mail.text,
        body_html=mail.html,
        defects="\n".join(mail.defects),
        automatic=automatic,
        stored_mime=stored,
        new_text=text_new,
    )


async def add_attachments(
    tx: Transaction, settings: EngineSettings, row: int, raw: bytes, mail: parser.ParsedMail
) -> None:
    """ExtractAttachments True: one row per attachment; False: the whole mail as one .eml,
    whose bytes are the message's raw (stored once: see `store.NewAttachment`)."""
    if not settings.extract_attachments:
        eml = NewAttachment(eml_name(mail.subject), "message/rfc822", raw, raw_of_message=True)
        await tx.add_attachment(row, eml)
        return
    for item in mail.attachments:
        await tx.add_attachment(
            row,
            NewAttachment(
                item.filename, item.content_type, item.payload, item.content_id, item.inline
            ),
        )


def eml_name(subject: str) -> str:
    """A safe file name for the whole mail stored as one attachment."""
    stem = re.sub(r"[^\w\- ]+", "_", subject, flags=re.UNICODE).strip(" ._")[:80]
    return f"{stem or 'message'}.eml"
