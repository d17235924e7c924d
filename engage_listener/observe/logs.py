"""Logging set-up: structlog, JSON lines for machines, console for people; and the
one redaction every exit of text goes through.

Operators read these logs first when something goes wrong, so every line is one
event with the listener ID bound. Secrets are scrubbed centrally here as the
last line of defence (code should never log them in the first place): a secret
is registered (`register_secret`) the moment it is obtained, and from then on
`scrub` replaces it by ``***`` wherever text leaves the process.

Decisions:
- One function, `scrub`, for every exit: structlog lines (`redact_secrets`),
  stdlib logging (aioimaplib, asyncio's own "Fatal error..." lines), the event
  loop's exception handler, uncaught exceptions (sys/threading/unraisable
  hooks), and error text written to the store (the store code calls `scrub`
  at write time, before it truncates anything, so no half secret survives).
- Stdlib logging is scrubbed by a LogRecord factory rather than by a handler
  filter: the factory sees every record whatever handlers exist (pytest's,
  logging.lastResort, an operator's), and it pre-renders the traceback as
  `exc_text`, which every stdlib Formatter uses instead of formatting anew.
  It is installed by the first `register_secret`, so a command that never
  configured logging is covered too.
- A secret is also registered in the forms it takes on the way out: IMAP
  quoted (``"pa\\"ss"``), Python repr (``'pa\\'ss'``, ``b'p\\xc3\\xa4ss'``), JSON,
  URL-encoded and base64, since an error may quote the wire form, not the value.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import logging
import re
import sys
import threading
import traceback
import urllib.parse
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

_SECRETS: set[str] = set()
_MASK = "***"
_MIN_LENGTH = 3
_PLAIN_TYPES = (int, float, bool, type(None))


class _Pattern:
    """The compiled alternation of every form of every secret; rebuilt on change."""

    def __init__(self) -> None:
        self.source: frozenset[str] = frozenset()
        self.regex: re.Pattern[str] | None = None

    def get(self) -> re.Pattern[str] | None:
        if self.source != _SECRETS:  # the set may be changed in place (tests do)
            self.source = frozenset(_SECRETS)
            forms = {form for secret in self.source for form in _forms(secret)}
            ordered = sorted(forms, key=len, reverse=True)  # longest wins at a position
            self.regex = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        return self.regex


_PATTERN = _Pattern()


def _forms(secret: str) -> set[str]:
    """`secret` as it may appear in error text: plain, quoted, escaped, encoded."""
    raw = secret.encode("utf-8", "surrogateescape")
    forms = {
        secret,
        secret.replace("\\", "\\\\").replace('"', '\\"'),  # IMAP quoted string
        repr(secret)[1:-1],
        repr(raw)[2:-1],
        jsonlib.dumps(secret)[1:-1],
        jsonlib.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        base64.b64encode(raw).decode("ascii"),
    }
    return {form for form in forms if len(form) >= _MIN_LENGTH}


def register_secret(value: str) -> None:
    """Remember a secret so that no log line, stored error or metric can ever show it."""
    if len(value) >= _MIN_LENGTH:
        _SECRETS.add(value)
        install_exit_redaction()


def scrub(text: str) -> str:
    """`text` with every registered secret (in any of its forms) replaced by ***."""
    regex = _PATTERN.get() if _SECRETS else None
    if regex is None or not text:
        return text
    return regex.sub(_MASK, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    # Anything else is rendered later with repr(): an exception, a command object.
    text = repr(value)
    cleaned = scrub(text)
    return value if cleaned == text else cleaned


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace every registered secret by ***."""
    if not _SECRETS:
        return event_dict
    return {key: _scrub(value) for key, value in event_dict.items()}


# ----- stdlib logging and the other exits ------------------------------------------------
_previous_factory = logging.getLogRecordFactory()
_installed = threading.Lock()
_done = False


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _previous_factory(*args, **kwargs)
    if _SECRETS:
        _scrub_record(record)
    return record


def _scrub_record(record: logging.LogRecord) -> None:
    """Render message and traceback now, scrubbed; formatters then use them as they are."""
    try:
        message = record.getMessage()
    except Exception:  # logging would print msg and args raw in its error report
        message = f"{record.msg!s} (arguments: {record.args!r})"
    record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = scrub(text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


def _print_scrubbed(text: str) -> None:
    stream = sys.stderr
    if stream is not None:
        stream.write(scrub(text))
        stream.flush()


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _print_scrubbed("".join(traceback.format_exception(kind, exc, tb)))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    lines = traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
    _print_scrubbed(f"Exception in thread {name}:\n" + "".join(lines))


def _unraisablehook(unraisable: Any) -> None:
    head = unraisable.err_msg or "Exception ignored in"
    lines = traceback.format_exception(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
    )
    _print_scrubbed(f"{head}: {unraisable.object!r}\n" + "".join(lines))


def install_exit_redaction() -> None:
    """Scrub stdlib log records and uncaught-exception reports in this process (once)."""
    global _done  # noqa: PLW0603 - one process-wide installation
    with _installed:
        if _done:
            return
        logging.setLogRecordFactory(_scrubbed_record)
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
        _done = True


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: one structlog line, scrubbed like the others.

    asyncio's default handler prints the context (a failed protocol callback, a
    task nobody awaited) with reprs that may quote a pending command.
    """
    message = str(context.get("message") or "unhandled exception in the event loop")
    exc = context.get("exception")
    details = {
        key: repr(value) for key, value in context.items() if key not in {"message", "exception"}
    }
    try:
        get_logger(component="asyncio").error(
            "loop_exception",
            message=message,
            **details,
            **({"exc_info": exc} if isinstance(exc, BaseException) else {}),
        )
    except Exception:  # never let reporting an error raise in the loop
        _print_scrubbed(f"loop_exception: {message}: {exc!r}\n")


def install_loop_exception_handler(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Route the loop's unhandled errors through `loop_exception_handler`."""
    (loop or asyncio.get_running_loop()).set_exception_handler(loop_exception_handler)


def configure_logging(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog once per process (JSON when the stream is not a terminal)."""
    out = stream if stream is not None else sys.stdout
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    install_exit_redaction()
    # aioimaplib logs whole responses at DEBUG; keep the stdlib side quiet.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)


Logger = FilteringBoundLogger  # what every component is handed to log with (typed, not Any)


def get_logger(**bound: Any) -> Logger:
    """A structlog logger with `bound` context on every line."""
    logger: FilteringBoundLogger = structlog.get_logger("engage_listener").bind(**bound)
    return logger
