"""Delivers queued case events to the CRM after their case committed, at least once.

Rows are written by the case engine in the mail's own transaction (`cases.webhooks`), so
an event is never lost nor invented. This task POSTs each (`webhook_http`): a 2xx makes
it `delivered`; a retryable answer leaves it `pending` with back-off (RETRY_BASE doubling
up to RETRY_CAP, or the receiver's Retry-After) until the Webhook's MaxAttempts, then it
is `failed`; a refusal (other 4xx, 3xx) fails it at once. A crash or kill at any point
leaves an undelivered row `pending`: it is sent again after the restart with the same
event id, which is what the receiver drops repeats by (at least once, never "maybe").
Only an operator moves a row out of `failed` (`engage-listener webhooks resend`, back to
`pending`, or `webhooks close`: never to be sent).

Decisions:

* In order per case: the store hands out an event only when no earlier event of its case
  is pending or failed, so a failed event holds its case's later ones until an operator
  resends or closes it.
* Each receiver is its own lane: the events of one round are POSTed per endpoint
  concurrently, and a retryable failure postpones every pending event of that endpoint
  (not only the one tried), so a receiver that is down costs one request per back-off,
  and never holds another receiver's events.
* Its own task, apart from the acknowledgements' (`delivery`) and from intake: nothing
  here is awaited by either, and no transaction is open during a request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engage_listener.config.webhook import WEBHOOK_MAX_RESPONSE_BYTES
from engage_listener.errors import EngageError
from engage_listener.observe.logs import Logger
from engage_listener.store.interface import Store, WebhookDelivery
from engage_listener.store.records import WEBHOOK_STATES, WebhookState

if TYPE_CHECKING:  # aiohttp is imported only once there is an event to send
    import aiohttp

    from engage_listener.outbox.webhook_http import Answer

RETRY_BASE = 10.0
RETRY_CAP = 3600.0
POLL = 30.0
MIN_WAIT = 0.2
BATCH = 50

STATES = WEBHOOK_STATES
RESENDABLE: tuple[WebhookState, ...] = ("failed", "closed")  # `webhooks resend`
CLOSABLE: tuple[WebhookState, ...] = ("failed", "pending")  # `webhooks close`


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where one listener's events go, and how (from its Webhook block)."""

    url: str
    secret: str = field(repr=False)
    ca_file: str | None = None
    timeout: float = 10.0
    max_attempts: int = 12
    max_response_bytes: int = WEBHOOK_MAX_RESPONSE_BYTES


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class WebhookSender:
    """One task for every listener's webhook events."""

    def __init__(
        self,
        store: Store,
        endpoints: Mapping[str, WebhookEndpoint],
        *,
        wake: asyncio.Event,
        stop: asyncio.Event,
        log: Logger,
        wall: Callable[[], float] = time.time,
        retry_base: float = RETRY_BASE,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.wake = wake
        self.stop = stop
        self.log = log
        self.wall = wall
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str | None, ssl.SSLContext] = {}

    async def run(self) -> None:
        """Deliver due events until stopped; woken at once when the engine queues one."""
        try:
            while not self.stop.is_set():
                self.wake.clear()  # before looking: an event queued meanwhile wakes us again
                timeout = POLL
                try:
                    await self.deliver_due()
                    timeout = await self._next_wait()
                except EngageError as exc:  # the store itself failing: try again later
                    self.log.error("webhook_outbox_error", error=str(exc))
                waiters = {asyncio.ensure_future(e.wait()) for e in (self.wake, self.stop)}
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _next_wait(self) -> float:
        due = await self.store.next_webhook_attempt()
        if due is None:
            return POLL
        return min(POLL, max(MIN_WAIT, due - self.wall()))

    async def deliver_due(self) -> int:
        """POST every event whose time has come; returns how many were delivered.

        Every event taken leaves pending-and-due (delivered, failed, or postponed), so
        the rounds end; a delivered one may make its case's next event due."""
        delivered = 0
        while not self.stop.is_set():
            rows = await self.store.due_webhook_events(self.wall(), BATCH)
            if not rows:
                break
            lanes: dict[WebhookEndpoint, list[WebhookDelivery]] = {}
            for row in rows:
                endpoint = self.endpoints.get(row.listener)
                if endpoint is None:
                    note = "the listener has no Webhook now; resend it once it has"
                    await self.store.update_webhook_event(row.id, "failed", last_error=note)
                    continue
                lanes.setdefault(endpoint, []).append(row)
            results = await asyncio.gather(
                *(self._lane(ep, lane) for ep, lane in lanes.items()), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                delivered += result
        return delivered

    async def _lane(self, endpoint: WebhookEndpoint, rows: Sequence[WebhookDelivery]) -> int:
        """One receiver's events of this round, in order; stops at its first retry."""
        delivered = 0
        for row in rows:
            if self.stop.is_set():
                break
            outcome = await self._attempt(endpoint, row)
            if outcome == "retry":
                break
            delivered += outcome == "delivered"
        return delivered

    async def _attempt(self, endpoint: WebhookEndpoint, row: WebhookDelivery) -> str:
        from engage_listener.outbox.webhook_http import post_event  # noqa: PLC0415 - start-up time

        context = await self._context(endpoint)
        answer = await post_event(
            self._client(), endpoint, row.event, row.event_id, row.body, context
        )
        attempts = row.attempts + 1
        where = {
            "webhook_id": row.id, "webhook_event": row.event, "event_id": row.event_id,
            "case_id": row.case_id, "listener": row.listener, "attempts": attempts,
        }  # fmt: skip
        if answer.outcome == "delivered":
            await self.store.update_webhook_event(
                row.id, "delivered", attempts=attempts, response=answer.detail,
                delivered_at=now_iso(),
            )  # fmt: skip
            self.log.info("webhook_delivered", status=answer.status, **where)
            return "delivered"
        if answer.outcome == "retry" and attempts < endpoint.max_attempts:
            await self._retry(endpoint, row, attempts, answer)
            return "retry"
        error = answer.detail
        if answer.outcome == "retry":
            error = f"gave up after {attempts} attempt(s): {error}"
        await self.store.update_webhook_event(row.id, "failed", attempts=attempts, last_error=error)
        self.log.error("webhook_failed", error=error, **where)
        return "failed"

    async def _retry(
        self, endpoint: WebhookEndpoint, row: WebhookDelivery, attempts: int, answer: Answer
    ) -> None:
        """Back off this event, and hold every pending event of its receiver as long."""
        backoff = min(self.retry_cap, self.retry_base * 2 ** (attempts - 1))
        asked = answer.retry_after  # honoured, within [1 s, the cap]: never a busy loop
        delay = backoff if asked is None else min(self.retry_cap, max(1.0, asked))
        until = self.wall() + delay
        await self.store.update_webhook_event(
            row.id, "pending", attempts=attempts, last_error=answer.detail, next_attempt_at=until
        )
        lane = [name for name, ep in self.endpoints.items() if ep == endpoint]
        await self.store.postpone_webhook_events(lane, until)
        self.log.warning(
            "webhook_retry", webhook_id=row.id, event_id=row.event_id, listener=row.listener,
            attempts=attempts, error=answer.detail, retry_in=round(delay, 3),
        )  # fmt: skip

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp  # noqa: PLC0415 - start-up time

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=8, limit_per_host=2)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def _context(self, endpoint: WebhookEndpoint) -> ssl.SSLContext | None:
        """The verifying TLS context of an https endpoint (made once per CA file)."""
        if not endpoint.url.lower().startswith("https:"):
            return None
        if endpoint.ca_file not in self._contexts:
            from engage_listener.outbox.webhook_http import tls_context  # noqa: PLC0415

            context = await asyncio.to_thread(tls_context, endpoint.ca_file)
            self._contexts[endpoint.ca_file] = context
        return self._contexts[endpoint.ca_file]
