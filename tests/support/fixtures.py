"""One pytest fixture per real server the tests talk to, plus the store they write.

Loaded by tests/conftest.py (`pytest_plugins`). Servers are real on loopback: Dovecot
(devkit.dovecot), aiosmtpd (servers/smtp_server.py) and the identity-provider imitation
(servers/oauth_server.py), and the misbehaving ones (servers/hostile_*.py, tcp_proxy.py),
which take their misbehaviour per test: their fixture is a function that starts one with
the behaviour given and stops it after the test.

Decisions:
- Every test that uses a Dovecot fixture is marked `dovecot` (conftest), so
  `-m "not dovecot"` runs what needs no mail server.
- One Dovecot serves the whole session: isolation comes from user names (`mailbox_user`);
  a test that stops or reconfigures its server takes `own_dovecot`.
- The identity provider counts grants and tokens, so `idp` is a fresh one per test;
  `shared_idp` is one per module, for Dovecot's oauth2 passdb (`dovecot_oauth`), which
  is configured with the provider's address when it starts.
- The SMTP server's mode comes from the test: `@pytest.mark.smtp("plain", auth=False)`
  (module-wide with `pytestmark`) or indirect parametrization with the mode.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DOVECOT_BIN, DovecotSandbox
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.graph import BOX
from tests.support.oauth import SECRET, Account
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.hostile_imap import Behaviour, HostileImap
from tests.support.servers.hostile_login import HostileLoginServer, Mode
from tests.support.servers.hostile_pop3 import HostilePop3, Mail
from tests.support.servers.hostile_smtp import RecordingSmtp
from tests.support.servers.oauth_server import OAuthTestServer, token_cache
from tests.support.servers.smtp_server import SmtpTestServer
from tests.support.servers.tcp_proxy import TcpProxy
from tests.support.servers.webhook_server import WebhookReceiver

StartHostileImap = Callable[..., Awaitable[HostileImap]]
StartRecordingSmtp = Callable[..., Awaitable[RecordingSmtp]]
StartHostilePop3 = Callable[..., HostilePop3]
StartHostileLogin = Callable[[Path, Mode], HostileLoginServer]
StartTcpProxy = Callable[..., TcpProxy]
StartWebhookReceiver = Callable[..., WebhookReceiver]

_user_numbers = itertools.count(1)
_account_numbers = itertools.count(1)


def _need_dovecot() -> None:
    if not Path(DOVECOT_BIN).exists():
        pytest.skip(
            f"Dovecot not found at {DOVECOT_BIN}: the tests need a real Dovecot 2.3 "
            "(dovecot-imapd, dovecot-pop3d); run the test command from the README, "
            "which installs it"
        )


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotSandbox]:
    """A Dovecot sandbox shared by the whole session (starting one costs ~1 s with stop)."""
    _need_dovecot()
    sandbox = DovecotSandbox(tmp_path_factory.mktemp("dovecot"))
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def own_dovecot(tmp_path: Path) -> Iterator[DovecotSandbox]:
    """A private Dovecot this test may stop and restart."""
    _need_dovecot()
    with DovecotSandbox(tmp_path / "dovecot") as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def dovecot_oauth(
    shared_idp: OAuthTestServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DovecotSandbox]:
    """A Dovecot whose logins are checked by the module's identity provider (XOAUTH2)."""
    _need_dovecot()
    sandbox = DovecotSandbox(
        tmp_path_factory.mktemp("dovecot-oauth"),
        oauth2_introspection_url=shared_idp.introspection_url,
    )
    with sandbox:
        yield sandbox


@pytest.fixture
def mailbox_user(request: pytest.FixtureRequest) -> str:
    """A user name nobody else has used in this session, readable in the Dovecot log."""
    # Dovecot lowercases user names and allows only [a-z0-9._@-].
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"{name or 'user'}-{next(_user_numbers)}"


@pytest.fixture
def smtp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmtpTestServer]:
    """A real SMTP server (aiosmtpd) in `tmp_path/smtp`; STARTTLS with AUTH unless the
    test's `smtp` marker (mode, auth=...) or indirect parameter (the mode) says otherwise."""
    marker = request.node.get_closest_marker("smtp")
    args, kwargs = (marker.args, dict(marker.kwargs)) if marker else ((), {})
    if hasattr(request, "param"):
        args = (request.param,)
    directory = tmp_path / "smtp"
    directory.mkdir(exist_ok=True)
    with SmtpTestServer(directory, *args, **kwargs) as server:
        yield server


@pytest.fixture
async def hostile_imap() -> AsyncIterator[StartHostileImap]:
    """Start IMAP servers that misbehave as told (`hostile_imap(Behaviour(...))`)."""
    async with AsyncExitStack() as stack:

        async def start(behaviour: Behaviour | None = None) -> HostileImap:
            return await stack.enter_async_context(HostileImap(behaviour))

        yield start


@pytest.fixture
def hostile_pop3() -> Iterator[StartHostilePop3]:
    """Start POP3 servers that misbehave as told (`hostile_pop3([Mail(...)], retr=...)`)."""
    with ExitStack() as stack:

        def start(mails: list[Mail], **behaviour: Any) -> HostilePop3:
            return stack.enter_context(HostilePop3(mails, **behaviour))

        yield start


@pytest.fixture
def hostile_login() -> Iterator[StartHostileLogin]:
    """Start TLS IMAP servers that answer the login oddly (`hostile_login(directory, mode)`)."""
    with ExitStack() as stack:

        def start(directory: Path, mode: Mode) -> HostileLoginServer:
            return stack.enter_context(HostileLoginServer(directory, mode))

        yield start


@pytest.fixture
async def recording_smtp() -> AsyncIterator[StartRecordingSmtp]:
    """Start SMTP servers that record what clients send and offer only what they are told."""
    async with AsyncExitStack() as stack:

        async def start(**behaviour: Any) -> RecordingSmtp:
            return await stack.enter_async_context(RecordingSmtp(**behaviour))

        yield start


@pytest.fixture
def tcp_proxy() -> Iterator[StartTcpProxy]:
    """Start TCP proxies to a server, whose connections the test cuts or stalls."""
    with ExitStack() as stack:

        def start(host: str, port: int, **options: Any) -> TcpProxy:
            return stack.enter_context(TcpProxy(host, port, **options))

        yield start


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[OAuthTestServer]:
    """A fresh identity provider (Microsoft and Google endpoints over HTTPS) for one test."""
    with OAuthTestServer(tmp_path / "idp") as server:
        yield server


@pytest.fixture(scope="module")
def shared_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthTestServer]:
    """One identity provider for a module's tests (each registers its own apps)."""
    with OAuthTestServer(tmp_path_factory.mktemp("idp")) as server:
        yield server


@pytest.fixture
def account(shared_idp: OAuthTestServer, tmp_path: Path) -> Account:
    """A fresh mailbox with its own app-only registration that may open it."""
    shared_idp.expires_in, shared_idp.rotate_refresh_tokens = 3600, False
    user = f"oauth-{next(_account_numbers)}-{time.monotonic_ns() % 100000}@contoso.test"
    shared_idp.add_ms_app("tenant-a", f"app-{user}", secret=SECRET, mailbox=user)
    tokens, key_file = token_cache(tmp_path / "state")
    return Account(user, tokens, key_file, tmp_path / "proto.log")


@pytest.fixture
def webhook_receiver(tmp_path: Path) -> Iterator[StartWebhookReceiver]:
    """Starts CRM webhook receivers (servers/webhook_server.py): `start(secret, tls=False)`;
    HTTPS from a private CA when `tls`. Every one is stopped after the test."""
    numbers = itertools.count(1)
    with ExitStack() as stack:

        def start(secret: str, *, tls: bool = False) -> WebhookReceiver:
            directory = tmp_path / f"webhook-{next(numbers)}" if tls else None
            return stack.enter_context(WebhookReceiver(secret, directory))

        yield start


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[GraphServer]:
    """The Graph imitation with the support mailbox (tests.support.graph.BOX)."""
    with GraphServer(tmp_path / "graph") as server:
        server.add_mailbox(BOX)
        yield server


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's store lives (read from outside with helpers.db_rows)."""
    return tmp_path / "store.sqlite3"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite store at `db`, open for the test."""
    opened = SqliteStore(db)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
