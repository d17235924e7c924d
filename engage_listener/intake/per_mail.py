"""The one per-mail path every source uses: ingest, or count a failure, or quarantine,
and log what happened.

Decisions:

* One bad mail never stops a batch: any error but the store's is counted against the
  mail (`Store.record_failure`) and the mail stays on the server for a later batch; at
  MaxAttempts it is quarantined. `QuarantineNow` (unknown sender under Quarantine, a
  parse past its budget) quarantines at once. A `StoreError` propagates: nothing of the
  mail committed, and the source must settle nothing more.
* Log lines carry the source's own names for the mail (`Delivered.where`) first, so an
  IMAP line says `uid` and a POP3 line `uid` (the UIDL) and `number`, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from engage_listener.errors import QuarantineNow, StoreError
from engage_listener.intake.contract import Delivered, Handled, Handler
from engage_listener.observe.logs import Logger
from engage_listener.store.interface import Store


class MailPath:
    """Commit / fail with attempts / quarantine / log, for one listener's mails.

    `log` may be swapped (a group commit holds log lines until it has committed);
    `quarantine_fields` are added to every `message_quarantined` line (IMAP: the error
    folder the mail goes to).
    """

    def __init__(
        self,
        store: Store,
        handler: Handler,
        *,
        max_attempts: int,
        log: Logger,
        quarantine_fields: Mapping[str, object] | None = None,
    ) -> None:
        self.store = store
        self.handler = handler
        self.max_attempts = max_attempts
        self.log = log
        self.quarantine_fields = dict(quarantine_fields or {})

    async def take(self, mail: Delivered) -> Handled:
        """Ingest one mail; see the module docstring for what may come of it."""
        try:
            done = await self.handler.ingest(mail.key, mail.raw, mail.prepared)
        except StoreError:
            raise
        except QuarantineNow as exc:
            return await self.quarantine(mail, str(exc), 1)
        except Exception as exc:  # one bad message never stops the batch
            return await self._failed(mail, exc)
        self.log.info(
            "message",
            **mail.where,
            case_id=done.case_id,
            case_number=done.case_number,
            new_case=done.new_case,
            duplicate=done.duplicate,
            ignored=done.ignored,
            ack=done.ack,
            size=len(mail.raw),
        )
        return Handled("committed", ingested=done)

    async def _failed(self, mail: Delivered, exc: Exception) -> Handled:
        """Count the attempt; at MaxAttempts the mail goes to quarantine."""
        reason = f"{type(exc).__name__}: {exc}"
        attempts = await self.store.record_failure(mail.key, reason)
        self.log.error(
            "message_failed",
            **mail.where,
            size=len(mail.raw),
            error=reason,
            attempts=attempts,
            max_attempts=self.max_attempts,
        )
        if attempts >= self.max_attempts:
            return await self.quarantine(mail, reason, attempts)
        return Handled("failed", attempts=attempts)

    async def quarantine(self, mail: Delivered, reason: str, attempts: int) -> Handled:
        """Keep the mail (or what the source could read of it) in quarantine."""
        entry = await self.handler.quarantine(mail.key, mail.raw, reason, attempts)
        self.log.warning(
            "message_quarantined",
            **mail.where,
            quarantine_id=entry,
            reason=reason,
            attempts=attempts,
            **self.quarantine_fields,
        )
        return Handled("quarantined", quarantine_id=entry, attempts=attempts)
