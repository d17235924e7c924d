"""The Graph source's transport: one `GraphSession` per mailbox, on aiohttp.

Every request obeys Graph's rules for Outlook mail and ours for a daemon:

* at most 4 requests in flight per mailbox (an `asyncio.Semaphore`, and the connection pool
  is the same size): Outlook throttles an app past 4 concurrent requests per mailbox;
* ``Prefer: IdType="ImmutableId"`` on every call (``$batch`` sub-requests too), so a message
  keeps its id when moved and the ledger key survives the move;
* a deadline per attempt (connect, headers and body) and a cap on the response size, checked
  while streaming, so a stuck or hostile server cannot hold the listener or its memory;
* 429 and 503 wait for ``Retry-After`` (a bounded number of times; a wait longer than
  ``max_retry_wait`` is left to the listener as `GraphThrottled`); other 5xx and dropped
  connections are retried only for GET (a POST may have been carried out);
* 401 asks the token callback once for a fresh token (``force=True``) and retries once;
* any other answer that is not a success is the error ``answers`` says its status means
  (403 `GraphAccessDenied` with its advice, 410 `DeltaExpired`...).

Decisions:
- aiohttp, not httpx: measured in bench/http_client.py against the Graph imitation, it takes
  a fifth of the CPU per request or less and has a per-host connection limit and a real total
  timeout (see bench/README.md, "HTTP client for Microsoft Graph").
- Links (``@odata.nextLink``, ``@odata.deltaLink``, the 410 ``Location``) are followed only
  on the configured endpoint's origin: the bearer token never goes to another host.
- No body and no token ever reaches an exception or a log line: errors are made by
  ``answers`` (status, code, scrubbed message); logged paths are `mask`-ed there too; each
  token is `register_secret`-ed when obtained.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from engage_listener.errors import ConnectionLostError
from engage_listener.observe.logs import get_logger, register_secret
from engage_listener.sources.graph.answers import (
    GraphRequestError,
    GraphResponse,
    GraphThrottled,
    ResponseTooLarge,
    checked,
    failure,
    graph_error,
    header,
    mask,
)

GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"
IMMUTABLE_IDS = 'IdType="ImmutableId"'
BATCH_LIMIT = 20  # Graph's limit of requests per $batch
_ERROR_BODY_CAP = 64 * 1024

TokenSource = Callable[[bool], Awaitable[str]]
"""Returns an access token for Graph; called with True after a 401 to get a fresh one."""


@dataclass(frozen=True)
class GraphHttpSettings:
    endpoint: str = GRAPH_ENDPOINT
    ca_file: Path | None = None
    max_concurrency: int = 4
    deadline: float = 60.0  # seconds per attempt, body included
    max_response_bytes: int = 64 * 1024 * 1024
    max_retries: int = 4
    max_retry_wait: float = 120.0  # a longer Retry-After is left to the listener
    proxy: str | None = None
    trust_env: bool = True  # HTTPS_PROXY/NO_PROXY, as msal's requests honours them
    delegated: bool = False  # a signed-in user's token (403 advice differs from app-only)


@dataclass(frozen=True)
class BatchRequest:
    id: str
    method: str
    url: str  # relative to the endpoint: /users/{id}/messages/{id}/move
    body: dict[str, Any] | None = None
    depends_on: Sequence[str] = ()


@dataclass(frozen=True)
class BatchResponse:
    id: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange, for the protocol log: no body, no token, state tokens masked."""

    method: str
    path: str
    status: int  # 0: no answer (connection lost, deadline)
    seconds: float
    attempt: int


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = header(headers, "Retry-After").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _target(url: str) -> URL | str:
    """A link Graph gave is sent byte for byte (its state tokens are opaque); our own paths
    are quoted by aiohttp."""
    return URL(url, encoded=True) if "%" in url else url


class GraphSession:
    """One mailbox's connection to Graph; use as an async context manager."""

    def __init__(self, mailbox: str, token: TokenSource,
                 settings: GraphHttpSettings | None = None, *,
                 on_exchange: Callable[[Exchange], None] | None = None) -> None:  # fmt: skip
        self.mailbox = mailbox
        self.settings = settings or GraphHttpSettings()
        self.base = f"/users/{quote(mailbox, safe='@')}"
        self._token_source = token
        self._token = ""
        self._had_token = False
        self._on_exchange = on_exchange
        self._gate = asyncio.Semaphore(self.settings.max_concurrency)
        self._origin = urlsplit(self.settings.endpoint)[:2]
        self._http: aiohttp.ClientSession | None = None
        self._log = get_logger(mailbox=mailbox)

    async def __aenter__(self) -> GraphSession:
        context = ssl.create_default_context(
            cafile=str(self.settings.ca_file) if self.settings.ca_file else None
        )
        limit = self.settings.max_concurrency
        connector = aiohttp.TCPConnector(ssl=context, limit=limit, limit_per_host=limit)
        self._http = aiohttp.ClientSession(connector=connector, trust_env=self.settings.trust_env,
                                           timeout=aiohttp.ClientTimeout(total=None))  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ----- the calls ------------------------------------------------------------------
    async def get_json(self, path: str, params: Mapping[str, str] | None = None,
                       prefer: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        return (await self.request("GET", path, params=params, prefer=prefer)).json()

    async def get_bytes(self, path: str, max_bytes: int | None = None) -> bytes:
        """A raw body, e.g. ``/messages/{id}/$value`` (the MIME text), at most `max_bytes`."""
        return (await self.request("GET", path, max_bytes=max_bytes)).body

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return (await self.request("POST", path, body=body)).json()

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def pages(self, path: str, params: Mapping[str, str] | None = None,
                    page_size: int | None = None) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """Every page of a collection, following ``@odata.nextLink``; the last page of a
        delta round is the one with ``@odata.deltaLink``."""
        prefer = [f"odata.maxpagesize={page_size}"] if page_size else []
        url: str | None = path
        while url:
            page = await self.get_json(url, params, prefer)
            yield page
            url, params = page.get("@odata.nextLink"), None

    async def batch(self, requests: Sequence[BatchRequest]) -> dict[str, BatchResponse]:
        """Run `requests` through ``$batch`` (20 a call); sub-requests throttled with 429/503
        are sent again after their ``Retry-After`` (bounded). Answers by request id, with
        whatever status each got: the caller decides (a 404 on a move means "already gone")."""
        answers: dict[str, BatchResponse] = {}
        for start in range(0, len(requests), BATCH_LIMIT):
            pending = list(requests[start : start + BATCH_LIMIT])
            for attempt in range(self.settings.max_retries + 1):
                got = await self._batch_once(pending)
                answers.update(got)
                again = [r for r in pending if got[r.id].status in (429, 503)]
                if not again or attempt == self.settings.max_retries:
                    break
                waits = [retry_after(got[r.id].headers) or 2.0**attempt for r in again]
                await asyncio.sleep(min(max(waits), self.settings.max_retry_wait))
                pending = again
        return answers

    async def _batch_once(self, requests: Sequence[BatchRequest]) -> dict[str, BatchResponse]:
        items = []
        for item in requests:
            entry: dict[str, Any] = {"id": item.id, "method": item.method, "url": item.url,
                                     "headers": {"Prefer": IMMUTABLE_IDS}}  # fmt: skip
            if item.body is not None:
                entry["body"] = item.body
                entry["headers"]["Content-Type"] = "application/json"
            if item.depends_on:
                entry["dependsOn"] = list(item.depends_on)
            items.append(entry)
        data = await self.post_json("/$batch", {"requests": items})
        answers = {}
        for raw in data.get("responses", []):
            headers = {str(k): str(v) for k, v in (raw.get("headers") or {}).items()}
            answers[str(raw["id"])] = BatchResponse(str(raw["id"]), int(raw["status"]),
                                                    headers, raw.get("body"))  # fmt: skip
        missing = [r.id for r in requests if r.id not in answers]
        if missing:
            text = f"Graph $batch left {len(missing)} requests unanswered"
            raise graph_error(GraphThrottled, text)
        return answers

    # ----- one request with its retries -----------------------------------------------
    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: dict[str, Any] | None = None, max_bytes: int | None = None,
                      prefer: Sequence[str] = ()) -> GraphResponse:  # fmt: skip
        """`method` on `path` (relative to the endpoint, or a link Graph gave) with every rule
        of this module; a 2xx answer, or the error `answers.checked` says it means."""
        url = self._url(path)
        refreshed = False
        attempt = 0
        while True:
            try:
                answer = await self._attempt(method, url, params, body, max_bytes, prefer, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if method != "GET" or attempt >= self.settings.max_retries:
                    text = f"Graph {method} {mask(url)}: no answer ({type(exc).__name__})"
                    raise graph_error(ConnectionLostError, text) from None
                await asyncio.sleep(min(2.0**attempt, self.settings.max_retry_wait))
                attempt += 1
                continue
            if answer.status == 401 and not refreshed:
                refreshed = True
                self._token = ""
                continue
            wait = self._retry_wait(method, answer, attempt, url)
            if wait is None:
                return checked(method, url, answer, self.mailbox, self.settings.delegated)
            await asyncio.sleep(wait)
            attempt += 1

    def _retry_wait(self, method: str, answer: GraphResponse, attempt: int,
                    url: str) -> float | None:  # fmt: skip
        """How long to wait before the next attempt, or None when the answer is final."""
        throttled = answer.status in (429, 503)
        if not throttled and not (answer.status >= 500 and method == "GET"):
            return None
        wait = retry_after(answer.headers) if throttled else None
        wait = 2.0**attempt if wait is None else wait
        if attempt >= self.settings.max_retries or wait > self.settings.max_retry_wait:
            error = failure(GraphThrottled, method, url, answer)
            error.retry_after = wait  # type: ignore[attr-defined]
            raise error
        return wait

    async def _attempt(self, method: str, url: str, params: Mapping[str, str] | None,
                       body: dict[str, Any] | None, max_bytes: int | None,
                       prefer: Sequence[str], attempt: int) -> GraphResponse:  # fmt: skip
        if self._http is None:
            raise RuntimeError("GraphSession used outside 'async with'")
        headers = {"Authorization": f"Bearer {await self._bearer()}", "Accept": "application/json",
                   "Prefer": ", ".join([IMMUTABLE_IDS, *prefer]),
                   "client-request-id": str(uuid.uuid4())}  # fmt: skip
        cap = max_bytes or self.settings.max_response_bytes
        started, answered = time.monotonic(), 0
        try:
            async with (
                self._gate,
                asyncio.timeout(self.settings.deadline),
                self._http.request(method, _target(url), params=params, json=body, headers=headers,
                                   proxy=self.settings.proxy, allow_redirects=False) as response,
            ):  # fmt: skip
                status = response.status
                limit = cap if status < 400 else _ERROR_BODY_CAP
                data = await self._read(method, url, response, limit)
                answered = status
                return GraphResponse(status, dict(response.headers), data)
        finally:  # status 0: no complete answer
            elapsed = time.monotonic() - started
            self._record(Exchange(method, mask(url), answered, elapsed, attempt))

    async def _read(self, method: str, url: str, response: aiohttp.ClientResponse,
                    cap: int) -> bytes:  # fmt: skip
        """The body, refused as soon as it is known to exceed `cap` (header or stream)."""
        too_large = graph_error(ResponseTooLarge, f"Graph {method} {mask(url)}: the answer "
                                f"is larger than {cap} bytes", response.status)  # fmt: skip
        if (response.content_length or 0) > cap:
            raise too_large
        chunks, total = [], 0
        async for chunk in response.content.iter_chunked(65536):
            total += len(chunk)
            if total > cap:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _bearer(self) -> str:
        if not self._token:
            self._token = await self._token_source(self._had_token)
            self._had_token = True
            register_secret(self._token)
        return self._token

    def _record(self, exchange: Exchange) -> None:
        self._log.debug("graph request", method=exchange.method, path=exchange.path,
                        status=exchange.status, ms=round(exchange.seconds * 1000))  # fmt: skip
        if self._on_exchange is not None:
            self._on_exchange(exchange)

    def _url(self, path: str) -> str:
        if "://" not in path:
            return self.settings.endpoint.rstrip("/") + "/" + path.lstrip("/")
        if urlsplit(path)[:2] != self._origin:
            raise graph_error(GraphRequestError, f"Graph gave a link to another host "
                              f"({urlsplit(path).netloc}); not following it")  # fmt: skip
        return path
