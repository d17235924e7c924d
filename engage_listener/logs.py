"""Logging set-up: structlog, JSON lines for machines, console for people.

Operators read these logs first when something goes wrong, so every line is one
event with the listener ID bound, and secrets are scrubbed centrally here as a
last line of defence (code should never log them in the first place).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

_SECRETS: set[str] = set()
_MASK = "***"


def register_secret(value: str) -> None:
    """Remember a secret so that no log line can ever show it."""
    if len(value) >= 3:
        _SECRETS.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _SECRETS:
            if secret in value:
                value = value.replace(secret, _MASK)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace every registered secret by ***."""
    if not _SECRETS:
        return event_dict
    return {key: _scrub(value) for key, value in event_dict.items()}


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
    # aioimaplib logs whole responses at DEBUG; keep the stdlib side quiet.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)


def get_logger(**bound: Any) -> FilteringBoundLogger:
    """A structlog logger with `bound` context on every line."""
    logger: FilteringBoundLogger = structlog.get_logger("engage_listener").bind(**bound)
    return logger
