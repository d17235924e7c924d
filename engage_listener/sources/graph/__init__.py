"""Microsoft Graph (issue 17): Microsoft 365 mailboxes read through Graph instead of
IMAP/POP3, on the intake contract. `http` is the transport (one session per mailbox on
aiohttp: at most 4 requests at once, deadlines, size caps, Retry-After, one token refresh
on 401, paging and JSON batching); `answers` reads what Graph answered (its errors as the
package's error classes, masked paths); `folders` resolves folder paths,
`delta` finds new mail, `batch` takes, commits and moves it, `listener` is the IMAP
listener's cycle around them.

May import: `intake` and everything below it (`http` and `answers` import only errors, logs
and aiohttp: they are the transport).
"""
