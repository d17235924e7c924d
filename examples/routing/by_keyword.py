"""Example routing hook: choose the inbox by keywords in the subject, then the body.

Copy this file next to the configuration file and name it in the listener's block:

    <RoutingHook>python:by_keyword:route</RoutingHook>

engage-listener imports the module normally and, only if it is not found, from the
configuration file's directory. The function runs in a worker thread (it is not async), for
every mail that opens or joins a case, and must return within RoutingTimeout seconds.
"""

from __future__ import annotations

import re
import unicodedata

from engage_listener.cases.hooks import HookContext, RoutingDecision

# Keyword (lower case, without accents) -> inbox. The first keyword found in the subject
# wins; only when the subject has none is the body searched, in the same order.
RULES: tuple[tuple[str, str], ...] = (
    ("reclamo", "Reclamos"),
    ("reclamacion", "Reclamos"),
    ("queja", "Reclamos"),
    ("factura", "Facturacion"),
    ("pago", "Facturacion"),
    ("cobro", "Facturacion"),
    ("baja", "Retencion"),
)
DEFAULT_INBOX = "General"
URGENT_WORDS = ("urgente",)
URGENT_PRIORITY = 1  # 1 is the highest priority in this installation


def route(ctx: HookContext) -> RoutingDecision:
    """Inbox for new cases, priority for urgent mail, no acknowledgement for automatic mail."""
    subject, body = _fold(ctx.message.subject), _fold(ctx.message.text)
    inbox = None
    if ctx.case.is_new:  # a reply keeps its case where the agents put it
        inbox = _match(subject) or _match(body) or DEFAULT_INBOX
    urgent = any(_has_word(word, f"{subject}\n{body}") for word in URGENT_WORDS)
    return RoutingDecision(
        inbox=inbox,
        priority=URGENT_PRIORITY if urgent else None,
        tags=("urgente",) if urgent else (),
        # An auto-reply or bounce must not get an acknowledgement (mail loops); otherwise
        # None leaves the listener's own setting in charge.
        acknowledge=False if ctx.message.automatic else None,
    )


def _match(text: str) -> str | None:
    return next((inbox for word, inbox in RULES if _has_word(word, text)), None)


def _has_word(word: str, text: str) -> bool:
    """Whole words and their longer forms: "factura" matches "facturas", not "refactura"."""
    return re.search(rf"\b{re.escape(word)}", text) is not None


def _fold(text: str) -> str:
    """Lower case without accents, so "RECLAMACIÓN" matches "reclamacion"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))
