"""One POP3 listener: poll every SyncMaxWaitTime, take each new mail once, delete it after.

POP3 has no folders, no push and no move, and DELE only takes effect at QUIT. The
ledger, keyed by the message's UIDL, is what makes it exactly once: a message is
deleted only after its transaction committed, and a message found in the ledger
again (its deletion was lost with a broken connection, or LeaveOnServer keeps it)
is never ingested again, only deleted (or left alone). Errors never escape `run`:
transient ones back off with jitter, permanent ones are retried slowly.

Decisions:

* A UIDL is not trusted alone (`pop3_ledger`): before a DELE the mail is fetched and
  its SHA-256 must be one taken under that UIDL; under LeaveOnServer the listed size
  must match (else the hash decides). A different mail is taken as a new one.
* A mail over MaxMessageSize (its LIST size) is never fetched whole: its `TOP n 0`
  header is quarantined `oversize` and the mail is left on the server for good; the
  ledger row (matched by the header's hash) keeps it from being quarantined again.
* ReadFromDate compares each new mail's Date header (`dates`: approximate). Operator
  control is read before each poll: a pause (`reset` to a future day) waits, `resume`
  ends it, and a date reset lowers the date (LeaveOnServer: `dates`), cleared once a
  poll took everything it found.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from engage_listener.config.model import DEFAULT_MAX_ATTEMPTS
from engage_listener.errors import ProtocolError
from engage_listener.intake.contract import Delivered, Handled
from engage_listener.intake.control import reset_done
from engage_listener.intake.per_mail import MailPath
from engage_listener.sources.listening import SourceListener
from engage_listener.sources.pop3.dates import DateFilter
from engage_listener.sources.pop3.ledger import (
    OVERSIZE,
    Seen,
    by_hash,
    by_size,
    ledger_key,
    next_generation,
    seen,
)
from engage_listener.sources.pop3.session import Listed, Pop3Session
from engage_listener.store.interface import MailKey
from engage_listener.store.records import LedgerState

__all__ = ["Pop3Listener", "Pop3Poll", "Pop3Result", "Pop3Settings", "ledger_key"]


@dataclass(frozen=True)
class Pop3Settings:
    """What the loop needs from the listener's configuration."""

    id: str
    sync_max_wait_time: float  # seconds between polls
    sync_max_changes_count: int  # new mails taken per poll
    leave_on_server: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    read_from: dt.datetime | None = None  # ReadFromDate at 00:00 in the listener's zone


@dataclass
class Pop3Result:
    found: int = 0
    ingested: int = 0
    already_known: int = 0
    failed: int = 0
    quarantined: int = 0
    deleted: int = 0  # only counted once QUIT committed the deletions
    deferred: int = 0  # new mails left for the next poll (sync_max_changes_count reached)
    too_old: int = 0  # new mails left on the server: Date before ReadFromDate (or a reset)
    seconds: float = 0.0


class Pop3Listener(SourceListener[Pop3Settings, Callable[[], Awaitable[Pop3Session]]]):
    """The polling loop of one POP3 listener; `run` for the daemon, `run_once` for cron."""

    def _start(self) -> None:
        self.known: dict[str, tuple[Seen, ...]] = {}  # UIDL -> its ledger rows (never removed)
        self.verified: dict[str, int] = {}  # UIDL -> listed size found to be a known mail
        self.dates = DateFilter(self.settings.read_from)

    async def run(self) -> None:
        """Poll until `stop` is set; never raises (except cancellation)."""
        failures, reason = 0, "startup backlog"
        while not self.stop.is_set():
            try:
                if await self._paused():
                    continue
                result = await self._poll(reason)
            except Exception as exc:
                failures += 1
                await self._back_off(exc, failures)
                continue
            failures = 0
            if result.deferred and result.ingested + result.quarantined:
                # More new mail is waiting and this poll made progress: go on at once.
                reason = "count"
                continue
            self.state = "idle"
            if await self._sleep(self.settings.sync_max_wait_time):
                break
            reason = "timeout"
        self.state = "stopped"
        self.log.info("listener_stopped")

    async def run_once(self) -> Pop3Result:
        """One poll (none while paused); errors propagate to the caller."""
        if await self._control_once() is None:
            return Pop3Result()
        return await self._poll("once")

    async def _paused(self) -> bool:
        """While a pause is requested: wait a while (or until stopped), True."""
        until = (await self._control()).paused_until
        if until is None:
            self.paused_until = None
            return False
        await self._wait_paused(until)
        return True

    async def _poll(self, reason: str) -> Pop3Result:
        reset = (await self._control()).reset_from
        if reset is not None:
            self.dates.lower_to(reset)
        self.state = "connecting"
        session = await self.connect()
        ep = session.endpoint
        self.log.info("connected", host=ep.host, port=ep.port, tls=session.tls, protocol="pop3")
        if session.tls == "none":  # AllowPlaintextLogin: said on every connection
            self.log.warning("plaintext_login", host=ep.host, port=ep.port, protocol="pop3")
        self.state = "processing"
        self.log.info("batch_start", reason=reason)
        poll = Pop3Poll(self, session)
        result = await poll.run()
        self.batches += 1
        self.last_error = None
        self.last_success_at = time.time()
        self.backlog = result.found - result.ingested - result.already_known - result.too_old
        self.log.info("batch_end", reason=reason, uidl=session.uidl_supported, **asdict(result))
        if reset is not None and not result.failed and not result.deferred:
            await reset_done(self.store, self.settings.id, reset)
            self.log.info("reset", since=reset.isoformat(), ingested=result.ingested)
        return result


class Pop3Poll:
    """One connection's work: list, take new mail in order, DELE what committed, QUIT."""

    def __init__(self, listener: Pop3Listener, session: Pop3Session) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.session = session
        self.log = listener.log
        self.result = Pop3Result()
        self._taken = 0
        self._deleted: list[tuple[MailKey, LedgerState]] = []  # DELE sent: (key, state)
        self.path = MailPath(
            listener.store, listener.handler, max_attempts=self.settings.max_attempts, log=self.log
        )

    async def run(self) -> Pop3Result:
        started = time.monotonic()
        failed = True
        try:
            listing = await self.session.listing()
            self._forget_gone({m.uidl for m in listing})
            self.result.found = len(listing)
            for listed in listing:
                if self.listener.stop.is_set():
                    break
                await self._one(listed)
            failed = False
        finally:
            await self._close(failed)
            self.result.seconds = round(time.monotonic() - started, 3)
        return self.result

    def _forget_gone(self, present: set[str]) -> None:
        for cache in (self.listener.known, self.listener.verified):
            for uidl in [u for u in cache if u not in present]:
                del cache[uidl]
        self.listener.dates.forget_gone(present)

    async def _one(self, m: Listed) -> None:
        rows = await self._rows(m.uidl)
        if m.size > self.session.endpoint.max_message_size:
            await self._oversize(m, rows)
            return
        if rows and self.settings.leave_on_server and self._same_size(m, rows):
            self.result.already_known += 1  # nothing is deleted: the listed size suffices
            return
        if not rows and (await self._too_old(m) or self._full()):
            return
        raw = await self._retrieve(m.number, m.uidl, m.size)
        if raw is None:  # a message the server cannot give us takes no slot
            return
        if rows:
            same = by_hash(rows, hashlib.sha256(raw).hexdigest())
            if same is not None:  # taken before: at most its deletion was lost
                self.listener.verified[m.uidl] = m.size
                self.result.already_known += 1
                await self._done(m.number, self._key(m.uidl, same.generation), same.state)
                return
            self.log.warning("uidl_reused", uid=m.uidl, number=m.number, size=m.size)
        self._taken += 1
        await self._ingest(m.number, m.uidl, self._key(m.uidl, next_generation(rows)), raw)

    async def _too_old(self, m: Listed) -> bool:
        """A new mail dated before ReadFromDate (or a reset's day) is left untaken."""
        dates = self.listener.dates
        if dates.since is None:
            return False
        if not dates.known_old(m.uidl, m.size):
            header = await self._header(m)
            if header is None:  # -ERR for this one (counted failed): left for the next poll
                return True
            if not dates.judge(m.uidl, m.size, header):
                return False
        self.result.too_old += 1
        return True

    def _key(self, uidl: str, generation: int) -> MailKey:
        return ledger_key(self.settings.id, uidl, generation)

    def _full(self) -> bool:
        """sync_max_changes_count new mails taken: the rest waits for the next poll."""
        if self._taken < self.settings.sync_max_changes_count:
            return False
        self.result.deferred += 1
        return True

    def _same_size(self, m: Listed, rows: tuple[Seen, ...]) -> bool:
        return self.listener.verified.get(m.uidl) == m.size or by_size(rows, m.size) is not None

    async def _rows(self, uidl: str) -> tuple[Seen, ...]:
        if uidl not in self.listener.known:
            self.listener.known[uidl] = await seen(self.listener.store, self.settings.id, uidl)
        return self.listener.known[uidl]

    def _remember(
        self, uidl: str, key: MailKey, state: LedgerState, sha256: str, size: int
    ) -> None:
        rows = self.listener.known.get(uidl, ())
        self.listener.known[uidl] = (*rows, Seen(int(key.epoch), state, sha256, size))

    async def _oversize(self, m: Listed, rows: tuple[Seen, ...]) -> None:
        """Over MaxMessageSize: quarantine its header once, never fetch it, never DELE it."""
        if self.listener.verified.get(m.uidl) == m.size:
            self.result.already_known += 1
            return
        header = await self._header(m)
        if header is None:
            return
        sha256 = hashlib.sha256(header).hexdigest()
        if by_hash(rows, sha256) is not None:
            self.listener.verified[m.uidl] = m.size
            self.result.already_known += 1
            return
        if self._full():
            return
        self._taken += 1
        key = self._key(m.uidl, next_generation(rows))
        limit = self.session.endpoint.max_message_size
        reason = f"{OVERSIZE}: {m.size} bytes > MaxMessageSize {limit}"
        await self.path.quarantine(Delivered(key, header, {"uid": m.uidl}), reason, 1)
        self._remember(m.uidl, key, "quarantined", sha256, len(header))
        self.listener.verified[m.uidl] = m.size
        self.result.quarantined += 1

    async def _header(self, m: Listed) -> bytes | None:
        try:
            return await self.session.header(m.number)
        except ProtocolError as exc:  # -ERR for this message only; it stays on the server
            self.result.failed += 1
            self.log.error("message_failed", uid=m.uidl, number=m.number, error=str(exc))
            return None

    async def _retrieve(self, number: int, uidl: str, size: int) -> bytes | None:
        try:
            return await self.session.retrieve(number, size)
        except ProtocolError as exc:  # -ERR for this message only; it stays on the server
            self.result.failed += 1
            self.log.error("message_failed", uid=uidl, number=number, error=str(exc))
            return None

    async def _ingest(self, number: int, uidl: str, key: MailKey, raw: bytes) -> None:
        """The per-mail path; what committed (a case or the quarantine: POP3 has no error
        folder, the store keeps the mail) may leave the server."""
        handled: Handled = await self.path.take(
            Delivered(key, raw, {"uid": uidl, "number": number})
        )
        if handled.outcome == "failed":
            self.result.failed += 1
            return
        self._remember(uidl, key, handled.outcome, hashlib.sha256(raw).hexdigest(), len(raw))
        if handled.outcome == "committed":
            self.result.ingested += 1
        else:
            self.result.quarantined += 1
        await self._done(number, key, handled.outcome)

    async def _done(self, number: int, key: MailKey, state: LedgerState) -> None:
        """DELE a message whose transaction committed, unless LeaveOnServer."""
        if self.settings.leave_on_server:
            return
        await self.session.delete(number)
        self._deleted.append((key, state))

    async def _close(self, failed: bool) -> None:
        """QUIT on a healthy connection, which commits every DELE sent (all after commit)."""
        if not self.session.healthy:
            self.session.abort()
            return
        try:
            await self.session.quit()
            self.result.deleted = len(self._deleted)
            # The ledger keeps telling quarantined mail apart.
            gone = [key for key, state in self._deleted if state != "quarantined"]
            if gone:
                await self.listener.store.mark_done(gone, "deleted")
        except Exception as exc:
            if not failed:
                raise
            self.log.warning("quit_failed", error=str(exc), error_type=type(exc).__name__)
