"""What Graph answered, read: its errors as the package's error classes, headers in any
case, and request paths made safe to log.

`GraphSession` (``http``) sends and retries (``Retry-After`` is its business); this module
says what a final answer means:

* 401 after the one refresh is an `AuthenticationError`;
* 403 is `GraphAccessDenied`, a permanent error with the two usual causes spelt out
  (`access_advice`: app-only and delegated tokens differ);
* 404 is `GraphNotFound`, another 4xx `GraphRequestError`;
* 410 on a delta link is `DeltaExpired` (the caller starts a full resync from its
  ``Location``);
* 5xx left after the retries is `GraphThrottled`, as is 429/503 past ``max_retry_wait``.

Decisions:
- Error classes live here rather than in `engage_listener.errors` while the intake contract
  is being rewritten; each derives from the package's TransientError/PermanentError.
- No body and no token ever reaches an exception: errors carry the status, Graph's error
  code and its (scrubbed, shortened) message; ``$skiptoken``/``$deltatoken`` values are
  masked in the paths they name (`mask`, also used for the logged paths).
- Kept apart from the transport for size: ``http`` is how a request is made, this module
  what its answer says; the callers that catch a Graph error import it from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from engage_listener.errors import AuthenticationError, PermanentError, TransientError
from engage_listener.observe.logs import scrub

_STATE_TOKEN = re.compile(r"(\$(?:skip|delta)token=)[^&]*", re.IGNORECASE)
_MESSAGE_CAP = 300  # characters of Graph's error message kept in ours


@dataclass(frozen=True)
class GraphResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body) if self.body else {}
        return data if isinstance(data, dict) else {"value": data}


class GraphFailure:
    """What Graph answered, without its body: a mixin of every Graph error below."""

    status: int = 0
    code: str = ""
    request_id: str = ""


def graph_error(kind: type[Exception], text: str, status: int = 0, code: str = "",
                request_id: str = "") -> Exception:  # fmt: skip
    """`kind` with `text` scrubbed of secrets, and Graph's facts as attributes."""
    error = kind(scrub(text))
    for name, value in (("status", status), ("code", code), ("request_id", request_id)):
        setattr(error, name, value)
    return error


class GraphAccessDenied(GraphFailure, PermanentError):
    """403: the app may not read or move mail in this mailbox."""


class GraphNotFound(GraphFailure, PermanentError):
    """404: the mailbox, folder or message does not exist (any more)."""


class GraphRequestError(GraphFailure, PermanentError):
    """Another 4xx: Graph refused the request as made."""


class ResponseTooLarge(GraphFailure, PermanentError):
    """The answer is larger than allowed (a message above MaxMessageSize)."""


class GraphThrottled(GraphFailure, TransientError):
    """Still throttled or unavailable after the retries, or asked to wait longer than we do."""

    retry_after: float = 0.0


class DeltaExpired(GraphFailure, TransientError):
    """410 on a delta or skip token: the folder must be synchronised again from scratch."""

    restart_url: str = ""


def mask(url: str) -> str:
    """`url`'s path and query, state tokens masked and secrets scrubbed: safe to log."""
    parts = urlsplit(url)
    text = parts.path + (f"?{parts.query}" if parts.query else "")
    return scrub(_STATE_TOKEN.sub(r"\1...", text))


def header(headers: Mapping[str, str], name: str) -> str:
    """A header by name in any case (``$batch`` sub-responses come as plain JSON objects)."""
    name = name.lower()
    return next((v for k, v in headers.items() if k.lower() == name), "")


def access_advice(mailbox: str, delegated: bool = False) -> str:
    if delegated:
        return (
            f"Microsoft Graph refused the signed-in user access to the mailbox {mailbox}. "
            "The user who ran `engage-listener auth login` needs Full Access to it "
            "(Add-MailboxPermission -AccessRights FullAccess), and the app registration the "
            "delegated Mail.ReadWrite.Shared permission (Entra ID > App registrations > API "
            "permissions), consented."
        )
    return (
        f"Microsoft Graph refused access to the mailbox {mailbox}. Either the app "
        "registration lacks the Mail.ReadWrite application permission with admin consent "
        "(Entra ID > App registrations > API permissions), or the mailbox is outside the "
        "app's application access policy or Exchange RBAC scope (New-ApplicationAccessPolicy, "
        "or a management role assignment with a resource scope): ask the Exchange "
        "administrator to include it."
    )


def checked(method: str, url: str, answer: GraphResponse, mailbox: str,
            delegated: bool) -> GraphResponse:  # fmt: skip
    """`answer` when it is a success, else raises the error its status means."""
    if answer.status < 300:
        return answer
    if answer.status == 401:
        raise failure(AuthenticationError, method, url, answer, "Graph refused the access "
                      "token even after a refresh")  # fmt: skip
    if answer.status == 403:
        raise failure(GraphAccessDenied, method, url, answer, access_advice(mailbox, delegated))
    if answer.status == 404:
        raise failure(GraphNotFound, method, url, answer)
    if answer.status == 410:
        error = failure(DeltaExpired, method, url, answer, "the delta token expired; "
                        "the folder is synchronised again")  # fmt: skip
        error.restart_url = header(answer.headers, "Location")  # type: ignore[attr-defined]
        raise error
    if answer.status >= 500:
        raise failure(GraphThrottled, method, url, answer)
    raise failure(GraphRequestError, method, url, answer)


def failure(kind: type[Exception], method: str, url: str, answer: GraphResponse,
            advice: str = "") -> Exception:  # fmt: skip
    """`kind` naming the request (masked), the status, Graph's error code and message."""
    try:
        detail = json.loads(answer.body).get("error", {})
    except (ValueError, AttributeError):
        detail = {}
    code = str(detail.get("code", "")) if isinstance(detail, dict) else ""
    message = str(detail.get("message", ""))[:_MESSAGE_CAP] if isinstance(detail, dict) else ""
    request_id = header(answer.headers, "request-id")
    text = f"Graph {method} {mask(url)}: {answer.status} {code}: {message}".rstrip(": ")
    return graph_error(kind, f"{text}. {advice}" if advice else text, answer.status, code,
                       request_id)  # fmt: skip
