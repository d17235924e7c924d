"""One signed POST of a case event to the CRM, with every outcome sorted (aiohttp).

The only module that talks HTTP for webhooks. The sender needs one answer per attempt:
delivered, try again (when), or give up (why): `Answer`.

Decisions:

* Signature: ``X-Engage-Signature: sha256=HEX`` with HEX the HMAC-SHA256, keyed by the
  Secret, of ``X-Engage-Timestamp`` (Unix seconds of this attempt), ``.``, and the body as
  sent. The timestamp lets the receiver refuse replays of an old request; the event id
  (``X-Engage-Event-Id``, and ``id`` in the body) lets it drop repeats we send on purpose.
* TLS is always verified (system store, or the Webhook's CaFile); there is no switch to
  turn it off. http:// is accepted by the configuration only to loopback.
* Every request has a deadline (connect, answer and body) and the answer's body is read
  up to `WEBHOOK_MAX_RESPONSE_BYTES`, the rest dropped with the connection: a stuck or
  hostile receiver holds neither the sender nor its memory. Once the status is in, a body
  that does not arrive in time changes nothing.
* 2xx: delivered. 408, 425, 429, 5xx and network trouble: retry (Retry-After honoured,
  seconds or an HTTP date). 3xx (redirects are not followed: the body would go elsewhere)
  and other 4xx: the receiver refuses this event; retrying would not change that.
* Neither the secret nor the body reaches an exception or a log line: errors carry the
  status and a scrubbed, shortened excerpt of the receiver's answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp

from engage_listener import __version__
from engage_listener.observe.logs import scrub
from engage_listener.outbox.webhooks import WebhookEndpoint

RETRYABLE = frozenset({408, 425, 429})
_EXCERPT = 300


@dataclass(frozen=True)
class Answer:
    """What came of one attempt: `delivered`, `retry` (after `retry_after` seconds if the
    receiver said so) or `refused`; `detail` is the line for the store and the log."""

    outcome: Literal["delivered", "retry", "refused"]
    detail: str
    status: int | None = None
    retry_after: float | None = None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Engage-Signature value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def headers(endpoint: WebhookEndpoint, event: str, event_id: str, body: bytes,
            now: float) -> dict[str, str]:  # fmt: skip
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"engage-listener/{__version__}",
        "X-Engage-Event": event,
        "X-Engage-Event-Id": event_id,
        "Idempotency-Key": event_id,
        "X-Engage-Timestamp": timestamp,
        "X-Engage-Signature": signature(endpoint.secret, timestamp, body),
    }


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (hostname checked); a private CA when configured."""
    return ssl.create_default_context(cafile=ca_file)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


async def _excerpt(response: aiohttp.ClientResponse, cap: int) -> str:
    """The start of the answer's body, at most `cap` bytes read, as one short line."""
    data = await response.content.read(cap)
    if not response.content.at_eof():
        response.close()  # the rest is dropped with the connection, never read
    text = " ".join(data.decode("utf-8", "replace").split())
    return scrub(text[:_EXCERPT])


def _sort(status: int, reason: str, excerpt: str, after: float | None) -> Answer:
    line = f"HTTP {status} {reason}".strip() + (f": {excerpt}" if excerpt else "")
    if 200 <= status < 300:
        return Answer("delivered", f"HTTP {status} {reason}".strip(), status)
    if status in RETRYABLE or status >= 500:
        return Answer("retry", line, status, after)
    if 300 <= status < 400:
        return Answer("refused", line + " (redirects are not followed; correct the Url)", status)
    return Answer("refused", line, status)


async def post_event(
    session: aiohttp.ClientSession,
    endpoint: WebhookEndpoint,
    event: str,
    event_id: str,
    body: bytes,
    ssl_context: ssl.SSLContext | None,
) -> Answer:
    """POST one event; never raises for anything the receiver or the network does."""
    now = time.time()
    status: int | None = None
    reason, after, excerpt = "", None, ""
    try:
        async with asyncio.timeout(endpoint.timeout):
            async with session.post(
                endpoint.url,
                data=body,
                headers=headers(endpoint, event, event_id, body, now),
                allow_redirects=False,
                ssl=ssl_context if ssl_context is not None else True,
            ) as response:
                status, reason = response.status, response.reason or ""
                after = retry_after(response.headers.get("Retry-After"), now)
                excerpt = await _excerpt(response, endpoint.max_response_bytes)
    except TimeoutError:
        if status is None:
            return Answer("retry", f"no answer within {endpoint.timeout:g} s")
        excerpt = f"(answer's body not finished within {endpoint.timeout:g} s)"
    except aiohttp.ClientSSLError as exc:
        return Answer("retry", scrub(f"TLS failed: {exc}"))
    except (aiohttp.ClientError, OSError) as exc:
        if status is None:
            return Answer("retry", scrub(f"{type(exc).__name__}: {exc}"[:_EXCERPT]))
    return _sort(status, reason, excerpt, after)
