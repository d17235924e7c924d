"""The one XML configuration builder of the tests: listener blocks and whole files.

Tests that start the daemon (or load a file) write their configuration with these
functions, so a change in the file's shape is made here once.

Decisions:
- Values are written as given (no escaping): tests put paths, host names and the odd
  deliberate oddity in them, and a test that wants markup in a value writes it.
- `minimal_listener` and `wrap` keep every line where the loader's error messages say it
  is (config tests assert line numbers), so they stay plain string builders.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from devkit.dovecot import DovecotSandbox

NEW, DONE = "IMAP/New", "IMAP/Done"
OWN = "soporte@example.org"  # the support desk's own address, acknowledgements' sender
DEFAULT_PROCESS = {"UseImapListener": "True"}
WITH_POP3 = {"UseImapListener": "True", "UsePop3Listener": "True"}
WITH_GRAPH = {"UseGraphListener": "True"}


def elements(values: Mapping[str, str], indent: str = "    ") -> str:
    """`<Name>value</Name>` lines, in the mapping's order."""
    return "".join(f"{indent}<{name}>{value}</{name}>\n" for name, value in values.items())


def block(kind: str, lid: str, values: Mapping[str, str], inner: str = "") -> str:
    """One listener block (`ImapListener` or `Pop3Listener`): its elements, then raw `inner`."""
    return f'  <{kind} ID="{lid}">\n{elements(values)}{inner}  </{kind}>\n'


def block_element(name: str, values: Mapping[str, str]) -> str:
    """A nested element (e.g. `Authentication`) inside a listener block."""
    return f"    <{name}>\n{elements(values, '      ')}    </{name}>\n"


def ack_xml(
    port: int,
    *,
    host: str = "127.0.0.1",
    security: str = "None",
    from_address: str = OWN,
    smtp: Mapping[str, str] | None = None,
    **extra: str,
) -> str:
    """An Acknowledgement block (a listener's `inner`) sending through host:port; `smtp`
    adds Smtp elements (UserName, Password, CaFile), `extra` Acknowledgement elements."""
    server = {"HostName": host, "Port": str(port), "Security": security, **(smtp or {})}
    return (
        "    <Acknowledgement>\n"
        f"      <Smtp>{elements(server, '').replace(chr(10), '')}</Smtp>\n"
        f"{elements({'FromAddress': from_address, **extra}, '      ')}"
        "    </Acknowledgement>\n"
    )


def webhook_xml(url: str, secret: str, **extra: str) -> str:
    """A Webhook block (a listener's `inner`, or a file's `tail`); `extra` adds elements
    (Events, Timeout, MaxAttempts, CaFile)."""
    values = {"Url": url, "Secret": secret, **extra}
    return f"    <Webhook>\n{elements(values, '      ')}    </Webhook>\n"


def listener_xml(
    dovecot: DovecotSandbox, user: str, lid: str = "Default", inner: str = "", **extra: str
) -> str:
    """An IMAP listener on the sandbox's plain port (STARTTLS), IMAP/New -> IMAP/Done."""
    values = {
        "HostName": dovecot.host,
        "Port": str(dovecot.imap_port),
        "UserName": user,
        "Password": DovecotSandbox.PASSWORD,
        "UseSsl": "False",
        "InputFolder": NEW,
        "OutputFolder": DONE,
        "CaFile": str(dovecot.ca_file),
        "SyncMaxWaitTime": "60",
        "SyncMaxChangesCount": "10",
        **extra,
    }
    return block("ImapListener", lid, values, inner)


def pop3_xml(dovecot: DovecotSandbox, user: str, lid: str = "Pop", **extra: str) -> str:
    """A POP3 listener on the sandbox's POP3S port."""
    values = {
        "HostName": dovecot.host,
        "Port": str(dovecot.pop3s_port),
        "UserName": user,
        "Password": DovecotSandbox.PASSWORD,
        "UseSsl": "True",
        "CaFile": str(dovecot.ca_file),
        **extra,
    }
    return block("Pop3Listener", lid, values)


def graph_xml(
    endpoint: str,
    ca_file: Path | str,
    mailbox: str,
    lid: str = "Graph",
    *,
    auth: Mapping[str, str] | None = None,
    inner: str = "",
    **extra: str,
) -> str:
    """A GraphListener on `endpoint` (the Graph imitation), Inbox/New -> Inbox/Done unless
    `extra` says otherwise (OutputFolder="" leaves it out: delete). `auth` replaces the
    default app-only Authentication (tenant-a, app-1, a plain client secret)."""
    values = {
        "Mailbox": mailbox,
        "GraphEndpoint": endpoint,
        "CaFile": str(ca_file),
        "InputFolder": "Inbox/New",
        "OutputFolder": "Inbox/Done",
        **extra,
    }
    values = {name: value for name, value in values.items() if value != ""}
    login = auth or {
        "Type": "Microsoft",
        "TenantId": "tenant-a",
        "ClientId": "app-1",
        "ClientSecret": "plain:graph-app-secret",
    }
    return block("GraphListener", lid, values, block_element("Authentication", login) + inner)


def config_text(
    *blocks: str,
    process: Mapping[str, str] | None = DEFAULT_PROCESS,
    store: str | None = "store.sqlite3",
    key_file: Path | str | None = None,
    metrics: str | None = None,
    tail: str = "",
) -> str:
    """A whole configuration file around listener blocks.

    `process` are the Process element's switches (IMAP on by default; None: no element),
    `store` the store's path (relative: next to the file; None: no element) or URL, `key_file`
    the Secrets key, `metrics` the Metrics element's attributes (`Listen="..." ...`),
    `tail` any further raw XML.
    """
    parts = ['<?xml version="1.0" encoding="utf-8"?>\n<EngageIntegrationService>\n', *blocks]
    if process is not None:
        parts.append(
            f'  <Process ID="EIS">{elements(process, "").replace(chr(10), "")}</Process>\n'
        )
    if store is not None:  # a postgresql:// URL is a PostgreSQL store
        kind = "Url" if store.startswith(("postgresql://", "postgres://")) else "Path"
        parts.append(f"  <Store><{kind}>{xml_escape(store)}</{kind}></Store>\n")
    if key_file is not None:
        parts.append(f"  <Secrets><KeyFile>{key_file}</KeyFile></Secrets>\n")
    if metrics is not None:
        parts.append(f"  <Metrics {metrics}/>\n")
    return "".join([*parts, tail, "</EngageIntegrationService>\n"])


def write_config(path: Path, *blocks: str, **options: Any) -> Path:
    """`config_text(*blocks, **options)` written to `path`; returns `path`."""
    path.write_text(config_text(*blocks, **options))
    return path


def wrap(body: str) -> bytes:
    """A whole file around body; body starts on line 2."""
    return f"<EngageIntegrationService>\n{body}</EngageIntegrationService>\n".encode()


def minimal_listener(extra: str = "", id_: str = "A", host: str = "<HostName>h</HostName>") -> str:
    """A minimal valid ImapListener (4 lines + extra lines), ending with a newline."""
    return (
        f'<ImapListener ID="{id_}">\n{host}\n<UserName>u</UserName>\n'
        f"<Password>p</Password>\n{extra}</ImapListener>\n"
    )


def single_listener(extra: str, kind: str = "ImapListener") -> bytes:
    """A whole file, on one line, of one minimal listener `A` of `kind` with `extra`
    inside (for tests of what one element does, not of where it is)."""
    return (
        f'<EngageIntegrationService><{kind} ID="A"><HostName>h</HostName>'
        f"<UserName>u</UserName><Password>p</Password>{extra}</{kind}>"
        "</EngageIntegrationService>"
    ).encode()
