"""Microsoft Graph (issue 17): Microsoft 365 mailboxes read through Graph instead of
IMAP/POP3. So far only the transport, `http` (one session per mailbox on aiohttp: at most 4
requests at once, deadlines, size caps, Retry-After, one token refresh on 401, paging and
JSON batching, Graph's errors as the package's error classes). The listener follows once
the intake contract of the redesign (issue 15) has landed.

May import: `intake` and everything below it (`http` itself imports only errors, logs and
aiohttp: it is a transport).
"""
