"""`engage-listener test-connection`: check each account step by step, in plain words.

An operator needs to know *which* step fails (name lookup, firewall, certificate,
password, folder) and what to change, not a traceback. Steps run in order and stop at
the first failure, as later ones could only fail too. No mail is touched; folders are
created and a test message sent only on request. Details are scrubbed of passwords.

With OAuth2 the login needs a token from the identity provider first; when that
fails (credentials refused, provider unreachable) the login step says so, with the
plain advice of `oauth_advice`, rather than blaming the mail server.

Its steps are recorded, rendered and judged by `diagnose_steps`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from socket import SOCK_STREAM
from typing import Any, TypeVar

from engage_listener.config.model import ListenerConfig
from engage_listener.errors import AuthenticationError, EngageError, ProtocolError, TlsError
from engage_listener.oauth.provider import TokenRefused
from engage_listener.ops.diagnose_oauth import Watched, provider_failure, watched, without
from engage_listener.ops.diagnose_steps import Step, Steps
from engage_listener.outbox.smtp import SmtpEndpoint, check_smtp, send_message
from engage_listener.sources.imap.listener import sibling
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import ImapEndpoint
from engage_listener.sources.pop3.session import Pop3Endpoint, Pop3Session

SUBJECT = "engage-listener test message"
NETWORK_TIMEOUT = 15.0  # seconds for DNS and TCP: an operator is waiting at the prompt
PORTS = {
    "imap": "check UseSsl/Port: 993 is implicit TLS (UseSsl True), 143 plain+STARTTLS",
    "pop3": "check UseSsl/Port: 995 is implicit TLS (UseSsl True), 110 plain+STLS",
    "smtp": "check Security/Port: 465 is SSL, 587 StartTls, 25 None",
}
TLS_TEXT = {
    "implicit": "implicit TLS, certificate verified",
    "starttls": "STARTTLS, certificate verified",
    "stls": "STLS, certificate verified",
    "none": "NOT encrypted: the password travels in clear",
}
BROKE = "the connection broke during the test: try again, check the server log"
_T = TypeVar("_T")


def _tls_hint(message: str, account: str) -> str:
    if "CA file" in message:
        return "CaFile must be a readable PEM bundle of the CA that signed the certificate"
    if "not trusted" in message or "CERTIFICATE_VERIFY_FAILED" in message:
        return "the certificate is not trusted: set CaFile to the PEM of its CA"
    if "does not offer STARTTLS" in message:
        return "the server offers no STARTTLS here; " + PORTS[account]
    if "refusing to send credentials in clear" in message:
        return (
            "nothing secret was sent; use UseSsl True on the implicit-TLS port, or set "
            "AllowPlaintextLogin True if this network is trusted; " + PORTS[account]
        )
    return PORTS[account]


def _login_hint(exc: Exception, watch: Watched | None) -> str:
    message = str(exc)
    if "LOGINDISABLED" in message or "offers no AUTH" in message:
        return "the server wants TLS before a login; use implicit TLS or STARTTLS"
    if watch is not None:
        if isinstance(exc, TokenRefused) and watch.refusal_advice:
            return watch.refusal_advice
        return "the OAuth2 token was refused: check the app registration, consent and scopes"
    return "wrong user or password; for Microsoft 365 use OAuth2, for Gmail an app password"


async def _reach(run: Steps, ep: ImapEndpoint | Pop3Endpoint | SmtpEndpoint) -> bool:
    """DNS, a bare TCP connect, the trust store: tells name, firewall and CaFile trouble apart."""
    loop, timeout = asyncio.get_running_loop(), min(ep.timeout, NETWORK_TIMEOUT)
    where, silent = f"{ep.host}:{ep.port}", f"no answer within {timeout:.0f} s"
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(ep.host, ep.port, type=SOCK_STREAM), timeout
        )
    except OSError as exc:  # socket.gaierror and TimeoutError are OSErrors
        hint = "check HostName and this machine's DNS settings"
        return run.add("dns", False, f"cannot resolve {ep.host}: {str(exc) or silent}", hint)
    run.add("dns", True, f"{ep.host} is {', '.join(sorted({str(i[4][0]) for i in infos})[:4])}")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), timeout)
    except ConnectionRefusedError:
        hint = f"nothing listens there (server down or wrong port); {PORTS[run.account]}"
        return run.add("tcp", False, f"{where} refused the connection", hint)
    except OSError as exc:
        hint = "a firewall may drop the traffic: check HostName, Port and outbound rules"
        return run.add("tcp", False, f"cannot connect to {where}: {str(exc) or silent}", hint)
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    run.add("tcp", True, f"connected to {where}")
    if isinstance(ep, SmtpEndpoint):  # smtp checks its CaFile itself
        return True
    try:
        ep.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        message = f"cannot load CA file {ep.ca_file}: {exc}"
        return run.add("tls", False, message, _tls_hint(message, run.account))
    return True


async def _open(
    run: Steps,
    opener: Callable[[], Awaitable[_T]],
    ep: ImapEndpoint | Pop3Endpoint | SmtpEndpoint,
    tls_seen: Callable[[], str | None],
) -> _T | None:
    """Connect, secure and log in; failures become tls, login or connect steps.

    A token the identity provider would not issue (refused, unreachable) is a login
    failure of its own: the mail server is not to blame, whatever error it became.
    """
    watch = ep.token_provider if isinstance(ep.token_provider, Watched) else None
    try:
        return await opener()
    except TlsError as exc:
        run.add("tls", False, str(exc), _tls_hint(str(exc), run.account))
    except (EngageError, OSError) as exc:
        no_token = watch is not None and watch.error is not None
        if not no_token and not isinstance(exc, AuthenticationError):
            run.failed(exc, f"the server closed or stalled the session; {PORTS[run.account]}")
            return None
        if (tls := tls_seen()) is not None:  # TLS, if any, was done before the login
            run.add("tls", True, TLS_TEXT[tls])
        if watch is not None and watch.error is not None:
            run.add("login", False, *provider_failure(watch.error, watch.auth))
        else:
            hint = _login_hint(exc, watch)
            run.add("login", False, without(str(exc), hint), hint)
    return None


def _logged_in(run: Steps, tls: str | None, user: str | None, oauth: bool) -> None:
    tls = tls or "none"
    run.add("tls", True, TLS_TEXT[tls], PORTS[run.account] if tls == "none" else "")
    how = f"logged in as {user} with {'OAuth2' if oauth else 'password'}"
    run.add("login", True, how if user else "no login configured")


async def _imap(
    run: Steps, cfg: ListenerConfig, ep: ImapEndpoint, create: bool, error_default: str
) -> None:
    if not await _reach(run, ep):
        return
    made: list[ImapSession] = []

    class Traced(ImapSession):
        """Keeps the session a failed open discards: it knows whether STARTTLS was done."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    oauth = ep.token_provider is not None
    tls_seen = lambda: made[0].tls if made else None  # noqa: E731
    if (session := await _open(run, lambda: Traced.open(ep), ep, tls_seen)) is None:
        return
    _logged_in(run, session.tls, ep.username, oauth)
    try:
        _capabilities(run, session)
        if await _folders(run, session, cfg, create, error_default):
            run.doing = "count"
            state = await session.select(cfg.input_folder)
            run.add("count", True, f"{state.exists} messages in {cfg.input_folder}")
    except (EngageError, OSError) as exc:
        run.failed(exc, BROKE)
    finally:
        await session.logout()


def _capabilities(run: Steps, session: ImapSession) -> None:
    """What the daemon adapts to; a missing one is a note, never a failure."""
    notes = {
        "IDLE": "no IDLE: the daemon polls instead",
        "MOVE": "no MOVE: COPY + delete is used",
        "UIDPLUS": "no UIDPLUS: without MOVE a plain EXPUNGE may remove others' deleted mail",
    }
    have = [name for name in notes if session.has_capability(name)]
    missing = [note for name, note in notes.items() if name not in have]
    starttls = {"starttls": "STARTTLS used", "implicit": "STARTTLS not needed (implicit TLS)"}
    found = [" ".join(have) or "none of IDLE MOVE UIDPLUS", *missing]
    run.add("capabilities", True, "; ".join([*found, starttls.get(session.tls, "no STARTTLS")]))


async def _folders(
    run: Steps, session: ImapSession, cfg: ListenerConfig, create: bool, error_default: str
) -> bool:
    """Input, output and error folders; returns whether the input folder is usable."""
    run.doing = "folders"
    error = cfg.error_folder or sibling(cfg.input_folder, await session.delimiter(), error_default)
    wanted = [("input", cfg.input_folder), ("output", cfg.output_folder), ("error", error)]
    input_ok, seen = False, set()
    for role, name in wanted:
        if name is None or name in seen:
            continue
        seen.add(name)
        run.doing = step = f"folder:{name}"
        if await session.folder_exists(name):
            ok = run.add(step, True, f"{role} folder exists")
        elif create:
            try:
                await session.create_folder(name)
            except ProtocolError as exc:
                hint = "the account may not create folders: create it in a mail client"
                ok = run.add(step, False, str(exc), hint)
            else:
                ok = run.add(step, True, f"{role} folder created")
        elif role == "error":  # the daemon creates it on the first quarantine
            ok = run.add(step, True, "error folder missing; created when first needed")
        else:
            hint = f"create it, fix {role.title()}Folder, or run test-connection --create-folders"
            ok = run.add(step, False, f"{role} folder {name!r} does not exist", hint)
        input_ok = input_ok or (role == "input" and ok)
    return input_ok


async def _pop3(run: Steps, ep: Pop3Endpoint) -> None:
    if not await _reach(run, ep):
        return
    oauth = ep.token_provider is not None
    tls_seen = "implicit" if ep.use_ssl else None  # STLS or not is unknown after a refusal
    if (session := await _open(run, lambda: Pop3Session.open(ep), ep, lambda: tls_seen)) is None:
        return
    _logged_in(run, session.tls, ep.username, oauth)
    run.doing = "count"
    try:
        listing = await session.list_uidls()
        how = "" if session.uidl_supported else " (no UIDL: headers are hashed instead)"
        run.add("count", True, f"{len(listing)} messages on the server{how}")
    except (EngageError, OSError) as exc:
        run.failed(exc, BROKE)
    finally:
        with suppress(EngageError, OSError):
            await session.quit()  # nothing was deleted, so QUIT commits nothing


async def _smtp(run: Steps, cfg: ListenerConfig, ep: SmtpEndpoint, send_to: str | None) -> None:
    if not await _reach(run, ep):
        return
    tls = {"SSL": "implicit", "StartTls": "starttls"}.get(ep.security)
    oauth = ep.token_provider is not None
    if await _open(run, lambda: check_smtp(ep), ep, lambda: tls) is None:
        return
    _logged_in(run, tls, ep.username, oauth)
    if send_to is None:
        return
    message = _test_message(cfg, ep, send_to)
    run.doing = "send"
    try:
        reply = await send_message(ep, message)
    except (EngageError, OSError) as exc:
        run.failed(exc, "check that the account may send as FromAddress and the recipient exists")
        return
    run.add("send", True, f"sent to {send_to} from {message['From']}: {reply}")


def _test_message(cfg: ListenerConfig, ep: SmtpEndpoint, send_to: str) -> EmailMessage:
    """From the acknowledgements' FromAddress, as the daemon's own mail would be."""
    sender = cfg.acknowledgement.from_address if cfg.acknowledgement else (ep.username or "")
    sender = sender if "@" in sender else "engage-listener@localhost"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, send_to, SUBJECT
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content(
        f"Sent by `engage-listener test-connection` for listener {cfg.id} to check its "
        "SMTP account. Nothing needs to be done.\n"
    )
    return message


async def test_listener(
    cfg: ListenerConfig,
    *,
    imap_endpoint: ImapEndpoint | None,
    pop3_endpoint: Pop3Endpoint | None,
    smtp_endpoint: SmtpEndpoint | None,
    create_folders: bool = False,
    send_to: str | None = None,
    error_folder_default: str = "Error",
) -> list[Step]:
    """Every step for one listener: its mailbox account, then its SMTP account if any."""
    imap_endpoint, pop3_endpoint = watched(imap_endpoint), watched(pop3_endpoint)
    smtp_endpoint = watched(smtp_endpoint)
    endpoints = (imap_endpoint, pop3_endpoint, smtp_endpoint)
    secrets = [ep.password for ep in endpoints if ep and ep.password]
    for ep in endpoints:  # the OAuth2 client secrets too, should an error ever quote one
        if ep is not None and isinstance(ep.token_provider, Watched) and ep.token_provider.auth:
            secrets.append(ep.token_provider.auth.client_secret or "")
    main = Steps(cfg.id, cfg.protocol, secrets)
    endpoint = pop3_endpoint if cfg.protocol == "pop3" else imap_endpoint
    if endpoint is None:
        raise ValueError(f"listener {cfg.id} reads {cfg.protocol} but got no endpoint for it")
    if isinstance(endpoint, Pop3Endpoint):
        await _pop3(main, endpoint)
    else:
        await _imap(main, cfg, endpoint, create_folders, error_folder_default)
    return main.steps + await test_smtp(cfg, smtp_endpoint, send_to, secrets)


async def test_smtp(
    cfg: ListenerConfig,
    smtp_endpoint: SmtpEndpoint | None,
    send_to: str | None,
    secrets: list[str] | None = None,
) -> list[Step]:
    """The steps of a listener's acknowledgement SMTP account, whatever reads its mail (the
    Graph listener's test-connection ends with them too); `secrets` are masked."""
    smtp_endpoint = watched(smtp_endpoint)
    known = list(secrets or [])
    if smtp_endpoint is not None:
        known.append(smtp_endpoint.password or "")
        provider = smtp_endpoint.token_provider
        if isinstance(provider, Watched) and provider.auth:
            known.append(provider.auth.client_secret or "")
    smtp = Steps(cfg.id, "smtp", [secret for secret in known if secret])
    if smtp_endpoint is not None:
        await _smtp(smtp, cfg, smtp_endpoint, send_to)
    elif send_to is not None:
        hint = "add an enabled Acknowledgement with its Smtp account to this listener"
        smtp.add("send", False, "no SMTP account to send with", hint)
    return smtp.steps
