"""What ingesting one mail produced, as the case engine returns it to intake."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ingested:
    """What ingesting one mail produced (for the log)."""

    case_id: int | None
    case_number: str | None
    new_case: bool
    duplicate: bool
    ignored: bool = False
    ack: str | None = None  # "queued", or why no acknowledgement is sent
