"""Realistic customer mail for the demo, the tests and the benchmarks (deterministic)."""

from __future__ import annotations

import datetime as dt
import random
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr

__all__ = ["sample_messages"]

_JOSE = ("José Pérez", "jose.perez@cliente.example")
_ANA = ("Ana López", "ana.lopez@cliente.example")
_MARIA = ("Maria Conceição", "maria@loja.com.br")
_JOHN = ("John Smith", "john.smith@example.org")


def _legacy(tag: str) -> Message:
    """An old mailer: iso-8859-1, quoted-printable body, encoded-word headers."""
    msg = MIMEText("Olá,\n\nO produto chegou danificado. Quero o reembolso.\n", "plain", "latin-1")
    msg["Subject"] = Header(f"Reclamação urgente{tag}", "iso-8859-1").encode()
    msg["From"] = formataddr(_MARIA, charset="iso-8859-1")
    return msg


def _sample(i: int, seed: int, date: dt.datetime) -> bytes:
    kind, tag = i % 8, (f" (#{i})" if i >= 8 else "")
    # A thread keeps its customer: the sender depends on the thread's first message.
    rng = random.Random(f"{seed}.{i - kind}")  # noqa: S311 - test data, not crypto
    sender = {1: _MARIA, 2: _JOHN, 7: _JOHN}.get(kind) or rng.choice([_JOSE, _ANA])
    msg = EmailMessage()
    if kind in (0, 3):
        order = 1000 + i - kind
        msg["Subject"] = ("RE: " if kind else "") + f"Consulta sobre mi pedido nº {order}{tag}"
        msg.set_content(f"Hola,\n\n¿Cuándo llegará mi pedido nº {order}?\n\n{sender[0]}\n")
    elif kind == 1:
        msg["Subject"] = f"Solicitação de orçamento{tag}"
        msg.set_content("Bom dia,\n\nGostaria de receber um orçamento para 20 licenças.\n")
    elif kind in (2, 7):
        msg["Subject"] = ("Re: " if kind == 7 else "") + f"Invoice question{tag}"
        msg.set_content("Hello,\n\nI was charged twice for invoice 2024-117. Please refund.\n")
    elif kind == 4:
        msg["Subject"] = f"Factura adjunta{tag}"
        msg.set_content("Adjunto la factura con el error en el importe.\n")
        pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="factura.pdf")
        msg.set_boundary(f"=_sample{seed}.{i}")  # the default one is random
    elif kind == 5:  # HTML only, as web forms send it
        msg["Subject"] = f"Formulario web: cambio de dirección{tag}"
        html = "<html><body><p>Nueva dirección: <b>Calle Mayor 5, Madrid</b></p></body></html>\n"
        msg.set_content(html, subtype="html")
    out: Message = _legacy(tag) if kind == 6 else msg
    if "From" not in out:
        out["From"] = formataddr(sender)
    out["To"] = "soporte@empresa.example"
    out["Date"] = format_datetime(date)
    out["Message-ID"] = f"<sample{seed}.{i}@cliente.example>"
    if kind in (3, 7):  # replies to kinds 0 and 2
        parent = f"<sample{seed}.{i - (3 if kind == 3 else 5)}@cliente.example>"
        out["In-Reply-To"] = out["References"] = parent
    # CRLF line ends, so the bytes come back from IMAP unchanged.
    return out.as_bytes(policy=out.policy.clone(linesep="\r\n"))


def sample_messages(n: int = 8, seed: int = 0) -> list[bytes]:
    """Deterministic customer mail covering the encodings real mailboxes contain."""
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC) + dt.timedelta(days=seed)
    return [_sample(i, seed, start + dt.timedelta(minutes=37 * i)) for i in range(n)]
