"""The case engine: one raw mail becomes a case (or joins one), in one transaction.

Everything for a mail (its case, message, attachments and ledger row) commits
together or not at all, which is what lets the listener move the mail on the
server afterwards without ever losing it or making a second case of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from . import parser
from .batch import Ingested
from .store import LedgerKey, NewAttachment, NewCase, NewMessage, Store, Transaction

BIG_MAIL = 1024 * 1024  # parse mails larger than this in a worker thread


@dataclass(frozen=True)
class EngineSettings:
    """Per-listener case rules (more arrive with the case-engine issue)."""

    listener: str
    extract_attachments: bool
    process: str | None = None


class CaseEngine:
    """Ingests mails of one listener into the store."""

    def __init__(self, store: Store, settings: EngineSettings) -> None:
        self.store = store
        self.settings = settings

    async def ingest(self, key: LedgerKey, raw: bytes) -> Ingested:
        """Parse, then commit case + message + attachments + ledger row together."""
        if len(raw) > BIG_MAIL:
            mail = await asyncio.to_thread(parser.parse, raw)
        else:
            mail = parser.parse(raw)
        message = self._message(raw, mail)
        async with self.store.transaction() as tx:
            duplicate = await tx.find_duplicate(key.listener, message.sha256, message.message_id)
            if duplicate is not None:
                case = await tx.case_of_message(duplicate)
                await tx.add_ledger(key, duplicate, message)
                return Ingested(case.id, case.case_number, new_case=False, duplicate=True)
            case = await tx.create_case(self._case(mail))
            row = await tx.add_message(case.id, message)
            await self._attach(tx, row, raw, mail)
            await tx.add_ledger(key, row, message)
        return Ingested(case.id, case.case_number, new_case=True, duplicate=False)

    def _message(self, raw: bytes, mail: parser.ParsedMail) -> NewMessage:
        sender = mail.sender or parser.Address("", "")
        stored = parser.strip_attachments(raw) if self.settings.extract_attachments else None
        return NewMessage(
            listener=self.settings.listener,
            message_id=mail.message_id,
            in_reply_to=mail.in_reply_to,
            sender=sender.address,
            sender_name=sender.name,
            subject=mail.subject,
            sent_at=mail.date,
            received_at=dt.datetime.now(dt.UTC),
            sha256=hashlib.sha256(raw).hexdigest(),
            raw=raw,
            parsed=mail.parsed,
            body_text=mail.text,
            body_html=mail.html,
            defects="\n".join(mail.defects),
            stored_mime=stored,
        )

    def _case(self, mail: parser.ParsedMail) -> NewCase:
        sender = mail.sender or parser.Address("", "")
        return NewCase(
            listener=self.settings.listener,
            process=self.settings.process,
            sender=sender.address,
            sender_name=sender.name,
            subject=mail.subject,
            normalized_subject=" ".join(mail.subject.casefold().split()),
        )

    async def _attach(
        self, tx: Transaction, row: int, raw: bytes, mail: parser.ParsedMail
    ) -> None:
        """ExtractAttachments True: one row per attachment; False: the whole mail as one .eml."""
        if not self.settings.extract_attachments:
            await tx.add_attachment(row, NewAttachment(_eml_name(mail.subject), "message/rfc822", raw))
            return
        for item in mail.attachments:
            await tx.add_attachment(
                row,
                NewAttachment(item.filename, item.content_type, item.payload,
                              item.content_id, item.inline),
            )


def _eml_name(subject: str) -> str:
    """A safe file name for the whole mail stored as one attachment."""
    stem = re.sub(r"[^\w\- ]+", "_", subject, flags=re.UNICODE).strip(" ._")[:80]
    return f"{stem or 'message'}.eml"
