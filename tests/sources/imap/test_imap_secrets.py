"""No secret leaves the IMAP adapter through an error path (issue 14, point 4 at its source).

aioimaplib formats the pending command into its exceptions: a server answering LOGIN
with a wrong tag made it raise `Abort("... (A1 LOGIN "user" "password") ...")` from
`data_received`, which asyncio's exception handler printed and the connection-lost
error quoted. Servers here answer LOGIN and AUTHENTICATE XOAUTH2 with a wrong tag, with
BAD quoting the command back, or drop the connection mid-command; afterwards neither
the password nor the token (nor its SASL payload) is in the raised error's str, repr,
args or chain, in the protocol log, in aioimaplib's log records (debug included) or in
anything handed to the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from engage_listener.errors import EngageError
from engage_listener.oauth.provider import provider_for, xoauth2_payload
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.sources.imap.session import ImapSession
from tests.support.fixtures import StartHostileImap
from tests.support.servers.hostile_imap import (
    PASSWORD,
    Behaviour,
    HostileImap,
    chain,
    endpoint,
    hostile_config,
)
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth, token_cache

SECRET = "secrets-app-secret-0123456789"
ODD = ["wrong-tag", "bad", "drop"]


def _texts(exc: BaseException) -> str:
    """Everything an error can show: str, repr and args of it and its whole chain."""
    parts: list[str] = []
    for link in chain(exc):
        parts += [str(link), repr(link), *(repr(a) for a in link.args)]
    return "\n".join(parts)


async def _open_against(
    server: HostileImap, ep: Any, caplog: pytest.LogCaptureFixture
) -> tuple[BaseException, str]:
    """Open a session that must fail; (the error, every other text that could leak)."""
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    try:
        with pytest.raises(EngageError) as raised:
            await ImapSession.open(ep)
        await asyncio.sleep(0.2)  # let stray callbacks and tasks report, if any
    finally:
        loop.set_exception_handler(previous)
    others = [repr(c) + repr(c.get("exception")) for c in handled]
    others += [r.getMessage() + repr(r.args) for r in caplog.records]
    return raised.value, "\n".join(others)


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_answer_to_login_never_carries_the_password(
    hostile_imap: StartHostileImap, tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: str
) -> None:
    log_file = tmp_path / "proto.log"
    server = await hostile_imap(Behaviour(login=odd))
    cfg = hostile_config(server.port, allow_plaintext_login=True)
    ep = dataclasses.replace(
        endpoint(cfg), protolog_factory=lambda: ProtocolLog(log_file, bodies=True)
    )
    error, others = await _open_against(server, ep, caplog)
    assert PASSWORD.encode() in server.received  # it was sent (in clear, allowed) ...
    for text in (_texts(error), others, log_file.read_text()):
        assert PASSWORD not in text  # ... and is nowhere else
    assert "LOGIN" in _texts(error) or "connection lost" in str(error)


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_answer_to_xoauth2_never_carries_the_token(
    hostile_imap: StartHostileImap,
    shared_idp: OAuthTestServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    odd: str,
) -> None:
    user = f"odd-{odd}-{time.monotonic_ns()}@contoso.test"
    shared_idp.add_ms_app("tenant-a", f"app-{user}", secret=SECRET, mailbox=user)
    cache, key_file = token_cache(tmp_path / "state")
    auth = ms_auth(shared_idp, key_file, client_id=f"app-{user}", client_secret=SECRET)
    provider = provider_for(auth, user, cache=cache, purpose="imap")
    log_file = tmp_path / "proto.log"
    server = await hostile_imap(Behaviour(login=odd))
    cfg = hostile_config(server.port, allow_plaintext_login=True, username=user)
    ep = dataclasses.replace(
        endpoint(cfg),
        password="",
        token_provider=provider,
        protolog_factory=lambda: ProtocolLog(log_file, bodies=True),
    )
    error, others = await _open_against(server, ep, caplog)
    tokens = [t for t in shared_idp.issued if t != SECRET and t.encode() in server.received]
    payloads = [xoauth2_payload(user, t) for t in shared_idp.issued]
    assert any(p.encode() in server.received for p in payloads)  # the token was sent ...
    for text in (_texts(error), others, log_file.read_text()):
        for secret in [*tokens, *payloads, SECRET]:
            assert secret not in text  # ... and is nowhere else
