"""What a GraphListener takes instead of the elements of an EWS (or IMAP) reader, for
`check-config` to say when such an element turns up in a GraphListener block.

Installations moving from the original products' Exchange Web Services readers copy their
blocks over and rename the tag. The original EWS block itself is not documented here (the
specification has only its ImapListener), so the names are the usual EWS client settings
(service URL or autodiscover, domain, impersonation, version, folder, polling) and the
IMAP login elements; each maps to the GraphListener element that does the same job. The
README's "Coming from EWS" table is the same mapping for people.

Decisions:
- A hint, not an alias: the element stays an error. Reading `UserName` as `Mailbox` would
  silently keep a Password nobody uses, and an EWS URL says nothing about Graph's.
"""

from __future__ import annotations

_ENDPOINT = (
    "Graph is reached over HTTPS at GraphEndpoint (default https://graph.microsoft.com/v1.0; "
    "a national cloud's own); no host, port, TLS or EWS URL is given"
)
_LOGIN = (
    "Graph takes no password: <Authentication> with Type Microsoft, TenantId, ClientId and "
    "ClientSecret (enc:...) or CertificateFile, or no secret for a user's sign-in "
    "(engage-listener auth login)"
)

GRAPH_INSTEAD: dict[str, str] = {
    "HostName": _ENDPOINT,
    "Port": _ENDPOINT,
    "UseSsl": _ENDPOINT,
    "AllowPlaintextLogin": _ENDPOINT,
    "Url": _ENDPOINT,
    "EwsUrl": _ENDPOINT,
    "ExchangeUrl": _ENDPOINT,
    "ServiceUrl": _ENDPOINT,
    "Autodiscover": _ENDPOINT,
    "UseAutodiscover": _ENDPOINT,
    "UserName": "the mailbox read is <Mailbox> (its address or object id); " + _LOGIN,
    "Password": _LOGIN,
    "Domain": "the tenant is <Authentication><TenantId> (e.g. contoso.onmicrosoft.com)",
    "ImpersonatedUser": "the mailbox read is <Mailbox>: an app with the Mail.ReadWrite "
    "application permission opens it directly, limited by an application access policy",
    "Impersonation": "the mailbox read is <Mailbox>: an app with the Mail.ReadWrite "
    "application permission opens it directly, limited by an application access policy",
    "ExchangeVersion": "no version is given: GraphEndpoint ends in /v1.0",
    "Folder": "the folder read is <InputFolder> (Inbox/New, or a well-known name)",
    "FolderName": "the folder read is <InputFolder> (Inbox/New, or a well-known name)",
    "WellKnownFolderName": "the folder read is <InputFolder> (Inbox/New, or a well-known name)",
    "PollingInterval": "new mail is looked for every <PollSeconds> (5 to 300) with delta",
    "PullInterval": "new mail is looked for every <PollSeconds> (5 to 300) with delta",
    "StreamingTimeout": "new mail is looked for every <PollSeconds> (5 to 300) with delta; "
    "Graph has no streaming subscription a firewalled site can receive",
}


def graph_hint(element: str) -> str | None:
    """What a GraphListener uses instead of `element`, or None for any other name."""
    return GRAPH_INSTEAD.get(element)
