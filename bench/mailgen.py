"""Deterministic, realistic customer mail for the ingest benchmark.

`corpus(n, seed)` returns the same n messages for the same seed, and its first n
messages never depend on how many follow, so every size of a run starts with the
same mail. In every block of 1,000 messages there are exactly:

* 617 text mails of about 2 KB (single part, text/plain),
* 280 HTML mails of about 20 KB (multipart/alternative, Outlook-style HTML),
* 100 mails of about 300 KB with a PDF or JPEG attachment (multipart/mixed),
* 3 mails of about 5 MB with a large attachment,

of which 20 (2 %) are malformed in one of eight ways seen in real mailboxes, and
30 are auto-replies; about a fifth of the rest reply to an earlier mail of the
same customer (In-Reply-To, References, "RE:" subject, quoted text). Text is
Spanish or Portuguese in utf-8, iso-8859-1 or windows-1252, sent as
quoted-printable, base64 or 8bit; subjects and names use RFC 2047 encoded-words
and non-ASCII file names RFC 2231 or encoded-words. Lines end in CRLF, so IMAP
gives the bytes back unchanged.
"""

# ruff: noqa: RUF001 - the dashes, quotes and ellipses are the point: windows-1252 text

from __future__ import annotations

import base64
import binascii
import datetime as dt
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr
from urllib.parse import quote

__all__ = ["BLOCK", "Corpus", "corpus", "huge_message", "simple_message"]

BLOCK = 1000
KIND_COUNTS = {"text": 617, "html": 280, "attach": 100, "huge": 3}
MALFORMED_PER_BLOCK = 20
AUTOREPLY_PER_BLOCK = 30
REPLY_SHARE = 0.2
SIZES = {"attach": 215_000, "huge": 3_760_000}  # binary attachment bytes (base64: x 1.37)

SUPPORT = ("Soporte Engage", "soporte@empresa.example")
FIRST = (
    "José", "María", "Ana", "Lucía", "Andrés", "Sofía", "Martín", "Camila", "Íñigo", "Begoña",
    "Nuria", "Ramón", "Agustín", "João", "Conceição", "Luís", "Gonçalo", "Inês", "Fátima",
    "Antônio", "Raquel", "Sebastião", "Márcia", "Estêvão",
)  # fmt: skip
LAST = (
    "Pérez", "López", "Fernández", "Muñoz", "Gómez", "Ibáñez", "Núñez", "Sáez", "Castaño",
    "Peña", "Silva", "Gonçalves", "Araújo", "Simões", "Magalhães", "Assunção", "Brandão", "Leão",
    "Falcão", "Guimarães", "Oliveira", "Souza",
)  # fmt: skip
DOMAINS = (
    "cliente.example", "correo.example.es", "empresa.example.com.br", "gmail.example",
    "outlook.example", "uol.example.com.br", "telefonica.example.es", "sapo.example.pt",
)  # fmt: skip
MAILERS = (
    "Microsoft Outlook 16.0",
    "Apple Mail (2.3774.300.61.1.2)",
    "Mozilla Thunderbird 115.9.0",
    "Roundcube Webmail/1.6.6",
    None,
    None,
)

SUBJECTS = {
    "es": (
        "Reclamación pedido nº {order}",
        "Consulta sobre la factura {inv}",
        "Devolución de producto dañado",
        "Cambio de dirección de envío",
        "Cobro duplicado en mi tarjeta",
        "¿Cuándo llega mi pedido {order}?",
        "Solicitud de presupuesto – {n} licencias",
        "URGENTE: error en la facturación",
        "Queja por la atención telefónica",
        "Factura {inv}",
        "Pedido {order} incompleto",
    ),
    "pt": (
        "Reclamação do pedido nº {order}",
        "Dúvida sobre a nota fiscal {inv}",
        "Solicitação de orçamento – {n} licenças",
        "Produto com defeito – troca",
        "Cobrança em duplicidade",
        "Atualização de endereço de entrega",
        "Cancelamento da assinatura",
        "Pedido {order} não entregue",
        "Nota fiscal {inv}",
    ),
}
PARAGRAPHS = {
    "es": (
        "Les escribo porque el pedido nº {order} todavía no ha llegado y ya han pasado más "
        "de diez días hábiles desde la confirmación del pago.",
        "He intentado comunicarme por teléfono en varias ocasiones, pero nadie atiende "
        "después de las 18:00 y el asistente automático corta la llamada.",
        "En la factura {inv} se ve claramente que me cobraron dos veces el mismo importe "
        "({amount} €), una el día 3 y otra el día 5.",
        "¿Podrían indicarme cuál es el plazo para la devolución y si tengo que pagar yo el "
        "envío de vuelta?",
        "La unidad llegó con la pantalla rota; la caja estaba aplastada en una esquina, así "
        "que supongo que el daño ocurrió durante el transporte.",
        "Necesito con urgencia la corrección del NIF en la factura, porque la contabilidad "
        "cierra el mes el viernes y sin ella no puedo deducir el «IVA».",
        "Me dijeron que “en 48 horas” tendría una respuesta… y sigo esperando – por favor, "
        "revisen el caso.",
        "Adjunto las fotos del embalaje y el albarán de entrega firmado por el conserje.",
        "Si no es posible la reparación, solicito el reembolso íntegro del importe pagado.",
    ),
    "pt": (
        "Gostaria de saber a situação do meu pedido nº {order}, que consta como «em "
        "trânsito» há mais de uma semana.",
        "Recebi o produto com defeito: o botão de ligar não funciona e a bateria não "
        "carrega, mesmo após seguir as instruções do manual.",
        "Já fiz a reclamação pelo site, mas não recebi nenhum número de protocolo nem "
        "qualquer retorno da equipe.",
        "Poderiam emitir a nota fiscal em nome da empresa? Segue o CNPJ: 12.345.678/0001-90.",
        "Solicito o reembolso integral do valor pago (R$ {amount}), conforme o Código de "
        "Defesa do Consumidor.",
        "A cobrança aparece duas vezes na fatura do cartão – “estorno em até 7 dias”, "
        "disseram… já se passaram três semanas.",
        "Informo que mudei de endereço; a nova morada é Rua Conceição, 145, São Paulo.",
        "Em anexo envio as fotos da embalagem e o comprovante de pagamento.",
    ),
}
GREETING = {"es": ("Buenos días:", "Hola,", "Estimados señores:"), "pt": ("Bom dia,", "Olá,")}
CLOSING = {
    "es": ("Quedo atento a su respuesta.\nSaludos cordiales,", "Gracias de antemano.\nUn saludo,"),
    "pt": ("Aguardo retorno.\nAtenciosamente,", "Obrigado pela atenção.\nAbraços,"),
}
REPLY_PREFIX = {"es": ("RE: ", "Re: ", "RE: RE: "), "pt": ("RES: ", "Re: ", "RES: RES: ")}
AUTO_SUBJECT = {
    "es": ("Respuesta automática: {subject}", "Fuera de la oficina: {subject}"),
    "pt": ("Resposta automática: {subject}", "Ausente do escritório: {subject}"),
}
AUTO_TEXT = {
    "es": "Estaré fuera de la oficina hasta el lunes {day} con acceso limitado al correo. "
    "Para asuntos urgentes, escriba a recepción.",
    "pt": "Estou ausente do escritório até segunda-feira, dia {day}, com acesso limitado ao "
    "e-mail. Para assuntos urgentes, contate a recepção.",
}
# Characters windows-1252 has and iso-8859-1 lacks, and their latin-1 stand-ins.
LATIN1_FIX = str.maketrans({"€": "EUR", "“": '"', "”": '"', "–": "-", "…": "...", "’": "'"})
MALFORMED_SINGLE = ("raw-8bit-headers", "bad-encoded-word", "wrong-charset", "bad-base64")
MALFORMED_MULTI = ("truncated", "no-boundary", "raw-8bit-headers")
MALFORMED_ANY = ("broken-headers", "bad-content-type")


@dataclass
class Customer:
    name: str
    address: str


@dataclass
class Meta:
    """What later mails need from an earlier one (replies quote and thread on it)."""

    customer: Customer
    lang: str
    subject: str
    message_id: str
    references: tuple[str, ...]
    date: dt.datetime
    first_line: str


@dataclass
class Corpus:
    """The generated messages and what they contain."""

    messages: list[bytes]
    kinds: Counter[str] = field(default_factory=Counter)
    traits: Counter[str] = field(default_factory=Counter)

    @property
    def total_bytes(self) -> int:
        return sum(len(m) for m in self.messages)

    def summary(self) -> str:
        n = len(self.messages) or 1
        kinds = ", ".join(f"{k} {self.kinds[k]}" for k in KIND_COUNTS if self.kinds[k])
        traits = ", ".join(f"{k} {v}" for k, v in sorted(self.traits.items()))
        return (
            f"{len(self.messages)} mails, {self.total_bytes / 1e6:.1f} MB "
            f"(mean {self.total_bytes / n / 1e3:.1f} KB): {kinds}; {traits}"
        )


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def _customers(seed: int, count: int = 400) -> list[Customer]:
    rng = random.Random(f"{seed}:customers")
    out = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = f"{_ascii(first)}.{_ascii(last)}{i}".replace(" ", "")
        out.append(Customer(f"{first} {last}", f"{local}@{rng.choice(DOMAINS)}"))
    return out


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _encode_body(text: str, charset: str, cte: str) -> bytes:
    data = text.replace("\r\n", "\n").encode(charset)
    if cte == "quoted-printable":
        return _crlf(binascii.b2a_qp(data, istext=True))
    if cte == "base64":
        return _crlf(base64.encodebytes(data))
    return _crlf(data)


def _header(text: str, charset: str) -> str:
    """An unstructured header value, as encoded-words when it is not plain ASCII."""
    if text.isascii():
        return text
    return Header(text, charset, maxlinelen=76).encode(linesep="\r\n")


def _fill(rng: random.Random, lang: str, target: int, values: dict[str, object]) -> list[str]:
    paras: list[str] = []
    size = 0
    while size < target:
        para = rng.choice(PARAGRAPHS[lang]).format(**values)
        paras.append(para)
        size += len(para) + 2
    return paras


def _html(rng: random.Random, paras: list[str], target: int) -> str:
    """Outlook-style HTML: a big style block, MsoNormal paragraphs, a signature table."""
    style = "".join(
        f"p.MsoNormal{i}, li.MsoNormal{i}, div.MsoNormal{i}\n"
        f'\t{{margin:0cm;font-size:11.0pt;font-family:"Calibri",sans-serif;'
        f"mso-fareast-language:EN-US;color:#{rng.randrange(0x1000000):06x};}}\n"
        for i in range(12)
    )
    head = (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" '
        'xmlns:o="urn:schemas-microsoft-com:office:office" '
        'xmlns:w="urn:schemas-microsoft-com:office:word">\n<head>\n'
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        f"<style><!--\n{style}--></style>\n</head>\n"
        '<body lang="ES" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">\n'
        '<div class="WordSection1">\n'
    )
    body: list[str] = []
    size = len(head)
    i = 0
    while size < target:
        para = paras[i % len(paras)]
        i += 1
        line = (
            '<p class="MsoNormal"><span style="font-size:11.0pt;font-family:&quot;Calibri&quot;,'
            f'sans-serif;mso-fareast-language:ES">{para}<o:p></o:p></span></p>\n'
            '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        )
        body.append(line)
        size += len(line)
    sig = (
        '<table class="MsoNormalTable" border="0" cellspacing="0" cellpadding="0">'
        '<tr><td style="padding:0cm 5.4pt"><p class="MsoNormal"><b>Departamento de '
        "Compras</b><br>Tel. +34 910 000 000</p></td></tr></table>\n"
    )
    return head + "".join(body) + sig + "</div>\n</body>\n</html>\n"


def _attachment(rng: random.Random, size: int, lang: str, inv: str) -> tuple[str, str, bytes]:
    """(content type, file name, data): a PDF, a JPEG or a ZIP of incompressible bytes."""
    pick = rng.randrange(3)
    if pick == 0:
        name = f"Factura_{inv}.pdf" if lang == "es" else f"Nota_fiscal_{inv}.pdf"
        head, tail = (
            b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<</Type/Catalog>>\nstream\n",
            b"\n%%EOF\n",
        )
        return "application/pdf", name, head + rng.randbytes(size) + tail
    if pick == 1:
        name = "foto_daño.jpg" if lang == "es" else "foto_embalagem_danificada.jpg"
        return "image/jpeg", name, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(size)
    name = "documentación.zip" if lang == "es" else "documentação.zip"
    return "application/zip", name, b"PK\x03\x04" + rng.randbytes(size)


def _filename_params(rng: random.Random, name: str) -> tuple[str, str]:
    """(Content-Type name=..., Content-Disposition filename...) as real mailers write them."""
    if name.isascii():
        return f'name="{name}"', f'filename="{name}"'
    if rng.random() < 0.5:  # Outlook, Gmail: encoded-words inside quotes
        word = Header(name, "utf-8").encode()
        return f'name="{word}"', f'filename="{word}"'
    encoded = "utf-8''" + quote(name.encode("utf-8"), safe="")  # RFC 2231: Thunderbird
    return f"name*={encoded}", f"filename*={encoded}"


class _Generator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.customers = _customers(seed)
        self.start = dt.datetime(2024, 3, 4, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
        self.metas: list[Meta] = []
        self.plan: list[tuple[str, str | None, bool]] = []
        self.charset = ""  # of the last mail's text

    def _plan_block(self, block: int) -> None:
        rng = random.Random(f"{self.seed}:block:{block}")
        kinds = [k for k, count in KIND_COUNTS.items() for _ in range(count)]
        rng.shuffle(kinds)
        broken = set(rng.sample(range(BLOCK), MALFORMED_PER_BLOCK))
        plain = [pos for pos, kind in enumerate(kinds) if kind == "text" and pos not in broken]
        auto = set(rng.sample(plain, AUTOREPLY_PER_BLOCK))  # auto-replies are short text
        for pos, kind in enumerate(kinds):
            malformed = None
            if pos in broken:
                multi = kind != "text"
                choices = (MALFORMED_MULTI if multi else MALFORMED_SINGLE) + MALFORMED_ANY
                malformed = rng.choice(choices)
            self.plan.append((kind, malformed, pos in auto))

    def message(self, i: int, counts: Counter[str], traits: Counter[str]) -> bytes:
        while len(self.plan) <= i:
            self._plan_block(len(self.plan) // BLOCK)
        kind, malformed, auto = self.plan[i]
        rng = random.Random(f"{self.seed}:{i}")
        counts[kind] += 1
        if malformed:
            traits[f"malformed:{malformed}"] += 1
        date = self.start + dt.timedelta(seconds=97 * i + rng.randrange(60))
        parent = None
        if not auto and self.metas and rng.random() < REPLY_SHARE:
            parent = self.metas[rng.randrange(max(0, len(self.metas) - 300), len(self.metas))]
        if auto:
            traits["auto-reply"] += 1
            raw = self._auto_reply(rng, i, date)
        else:
            if parent is not None:
                traits["reply"] += 1
            raw = self._customer_mail(rng, i, kind, date, parent, malformed)
        if malformed:
            raw = _corrupt(rng, raw, malformed)
        traits[f"charset:{self.charset}"] += 1
        return raw

    # -- the kinds of mail -------------------------------------------------------------

    def _common(
        self,
        rng: random.Random,
        i: int,
        customer: Customer,
        subject: str,
        charset: str,
        date: dt.datetime,
        raw_headers: bool = False,
    ) -> tuple[list[str], str]:
        mid = f"<bench.{self.seed}.{i}.{rng.randrange(10**9):09d}@{customer.address.split('@')[1]}>"
        relay = f"192.0.2.{rng.randrange(1, 255)}"
        name = (
            f'"{customer.name}" <{customer.address}>'
            if raw_headers
            else formataddr((customer.name, customer.address), charset=charset)
        )
        headers = [
            f"Return-Path: <{customer.address}>",
            f"Received: from mail.{customer.address.split('@')[1]} (mail [{relay}])\r\n"
            f"\tby mx1.empresa.example (Postfix) with ESMTPS id {rng.randrange(16**10):010X}\r\n"
            f"\tfor <soporte@empresa.example>; {format_datetime(date)}",
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d="
            + customer.address.split("@")[1]
            + "; s=sel1;\r\n\th=from:to:subject:date:message-id; bh="
            + base64.b64encode(rng.randbytes(32)).decode()
            + ";\r\n\tb="
            + base64.b64encode(rng.randbytes(180)).decode(),
            f"From: {name}",
            f"To: {formataddr(SUPPORT)}",
            f"Subject: {subject if raw_headers else _header(subject, charset)}",
            f"Date: {format_datetime(date)}",
            f"Message-ID: {mid}",
        ]
        mailer = rng.choice(MAILERS)
        if mailer:
            headers.append(f"X-Mailer: {mailer}")
        headers.append("MIME-Version: 1.0")
        return headers, mid

    def _customer_mail(
        self,
        rng: random.Random,
        i: int,
        kind: str,
        date: dt.datetime,
        parent: Meta | None,
        malformed: str | None,
    ) -> bytes:
        customer = parent.customer if parent else rng.choice(self.customers)
        lang = parent.lang if parent else rng.choice(("es", "es", "pt"))
        values = {
            "order": 100000 + rng.randrange(900000),
            "inv": f"F{date.year}-{rng.randrange(100000):05d}",
            "amount": f"{rng.randrange(10, 3000)},{rng.randrange(100):02d}",
            "n": rng.randrange(2, 200),
        }
        charset = rng.choices(("utf-8", "iso-8859-1", "windows-1252"), (55, 30, 15))[0]
        if parent is not None:
            subject = rng.choice(REPLY_PREFIX[lang]) + parent.subject
        else:
            subject = rng.choice(SUBJECTS[lang]).format(**values)
        if malformed == "wrong-charset":
            charset = "iso-8859-1"
        self.charset = charset
        text = self._text(rng, customer, lang, values, kind, parent)
        if charset == "iso-8859-1":
            subject, text = subject.translate(LATIN1_FIX), text.translate(LATIN1_FIX)
        headers, mid = self._common(
            rng, i, customer, subject, charset, date, malformed == "raw-8bit-headers"
        )
        if parent is not None:
            refs = (*parent.references, parent.message_id)[-10:]
            headers.append(f"In-Reply-To: {parent.message_id}")
            headers.append("References: " + "\r\n\t".join(refs))
        else:
            refs = ()
        self.metas.append(Meta(customer, lang, subject, mid, refs, date, text.splitlines()[2][:70]))
        plain_cte = {
            "utf-8": rng.choice(("quoted-printable", "quoted-printable", "base64", "8bit")),
            "iso-8859-1": rng.choice(("quoted-printable", "8bit")),
            "windows-1252": rng.choice(("quoted-printable", "quoted-printable", "base64")),
        }[charset]
        if malformed == "bad-base64":
            plain_cte = "base64"
        elif malformed == "wrong-charset":
            plain_cte = "8bit"
        plain = _part("text/plain", charset, plain_cte, text)
        boundary = f"----=_Part_{self.seed}_{i}_{rng.randrange(10**12)}"
        if kind == "text":
            body = plain
        else:
            html_size = {"html": 13_500, "attach": 5_000, "huge": 5_000}[kind]
            html = _html(rng, text.split("\n\n"), html_size)
            html_cte = "base64" if charset == "utf-8" and rng.random() < 0.3 else "quoted-printable"
            html_part = _part("text/html", charset, html_cte, html)
            body = _multipart("alternative", boundary + "_alt", [plain, html_part])
            if kind in ("attach", "huge"):
                body = _multipart(
                    "mixed", boundary, [body, self._attachment_part(rng, kind, lang, values)]
                )
        return ("\r\n".join(headers) + "\r\n").encode("utf-8") + body

    def _attachment_part(
        self, rng: random.Random, kind: str, lang: str, values: dict[str, object]
    ) -> bytes:
        size = int(SIZES[kind] * rng.uniform(0.85, 1.15))
        ctype, name, data = _attachment(rng, size, lang, str(values["inv"]))
        name_param, file_param = _filename_params(rng, name)
        return (
            f"Content-Type: {ctype}; {name_param}\r\n"
            f"Content-Disposition: attachment; {file_param}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode() + _crlf(base64.encodebytes(data))

    def _text(
        self,
        rng: random.Random,
        customer: Customer,
        lang: str,
        values: dict[str, object],
        kind: str,
        parent: Meta | None,
    ) -> str:
        target = rng.randrange(450, 950) if kind == "text" else rng.randrange(1500, 2500)
        paras = _fill(rng, lang, target, values)
        greeting, closing = rng.choice(GREETING[lang]), rng.choice(CLOSING[lang])
        text = "\n\n".join([greeting, *paras, closing]) + "\n" + customer.name + "\n"
        if parent is not None:
            when = format_datetime(parent.date)
            said = "escribió" if lang == "es" else "escreveu"
            quoted = (
                f"\nEl {when}, {parent.customer.name} <{parent.customer.address}> {said}:\n"
                f"> {parent.first_line}\n> \n> {parent.customer.name}\n"
            )
            text += quoted
        return text

    def _auto_reply(self, rng: random.Random, i: int, date: dt.datetime) -> bytes:
        customer = rng.choice(self.customers)
        lang = rng.choice(("es", "pt"))
        about = f"Caso {rng.randrange(10000, 99999)} - hemos recibido su consulta"
        subject = rng.choice(AUTO_SUBJECT[lang]).format(subject=about)
        charset = self.charset = rng.choice(("utf-8", "iso-8859-1"))
        headers, _ = self._common(rng, i, customer, subject, charset, date)
        headers += [
            "Auto-Submitted: auto-replied",
            "X-Auto-Response-Suppress: All",
            f"In-Reply-To: <ack.{rng.randrange(10**8)}@empresa.example>",
        ]
        if rng.random() < 0.5:
            headers.append("Precedence: auto_reply")
        text = AUTO_TEXT[lang].format(day=rng.randrange(1, 28)) + "\n\n" + customer.name + "\n"
        body = _part("text/plain", charset, "quoted-printable", text)
        return ("\r\n".join(headers) + "\r\n").encode() + body


def _part(ctype: str, charset: str, cte: str, text: str) -> bytes:
    return (
        f'Content-Type: {ctype}; charset="{charset}"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    ).encode() + _encode_body(text, charset, cte)


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    out.append(b"This is a multi-part message in MIME format.\r\n")
    for part in parts:
        out.append(f"\r\n--{boundary}\r\n".encode() + part)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def _corrupt(rng: random.Random, raw: bytes, how: str) -> bytes:
    """Break a well-formed mail the way real senders and relays do."""
    head, body = _split(raw)
    if how == "truncated":  # a relay cut the transfer: no closing boundary, half a base64 line
        return raw[: int(len(raw) * rng.uniform(0.4, 0.8))]
    if how == "no-boundary":  # multipart without its boundary parameter
        return re.sub(rb'(multipart/\w+); boundary="[^"]+"', rb"\1", raw, count=1)
    if how == "bad-base64":  # stray characters and lost padding in a base64 body
        lines = body.split(b"\r\n")
        for k in range(0, len(lines), 3):
            if lines[k]:
                lines[k] = lines[k][:20] + b"*!" + lines[k][20:]
        return head + b"\r\n\r\n" + b"\r\n".join(lines).rstrip(b"=\r\n") + b"\r\n"
    if how == "wrong-charset":  # latin-1 bytes labelled utf-8
        return raw.replace(b'charset="iso-8859-1"', b'charset="utf-8"')
    if how == "raw-8bit-headers":  # UTF-8 straight in Subject and From, no encoded-words
        return raw
    if how == "bad-encoded-word":  # unknown charset, bad base64 and an unterminated word
        broken = (
            b"Subject: =?x-unknown?Q?Reclamaci=F3n?= =?utf-8?B?UmVjbGFtYWNp?=\r\n"
            b" =?iso-8859-1?Q?pedido_n=BA_12345"
        )
        return re.sub(rb"Subject: .*?(?=\r\n[^ \t])", broken, head, count=1, flags=re.S) + (
            b"\r\n\r\n" + body
        )
    if how == "broken-headers":  # no From, an impossible Date, a header line without a colon
        head = re.sub(rb"\r\nFrom: .*?(?=\r\n[^ \t])", b"", head, count=1, flags=re.S)
        head = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: Lun, 32 Foo 2024 25:61:00 +2500", head)
        head = head.replace(b"\r\nMIME-Version", b"\r\nthis line has no colon\r\nMIME-Version")
        return head + b"\r\n\r\n" + body
    if how == "bad-content-type":  # a made-up type and an empty charset
        head = re.sub(rb"Content-Type: [^;\r]+", b"Content-Type: texto/plano", head, count=1)
        head = head.replace(b'charset="', b'charset=""; x="', 1)
        return head + b"\r\n\r\n" + body
    raise ValueError(how)


def corpus(n: int, seed: int = 2024) -> Corpus:
    """The first n messages of the seeded mix (see the module docstring)."""
    gen = _Generator(seed)
    out = Corpus([])
    out.messages = [gen.message(i, out.kinds, out.traits) for i in range(n)]
    return out


def simple_message(tag: str, seed: int = 7) -> bytes:
    """A valid, unique 2 KB customer mail that always opens a case of its own."""
    rng = random.Random(f"{seed}:{tag}")
    customer = Customer(f"Cliente {tag}", f"cliente.{tag}@latencia.example")
    date = dt.datetime(2024, 5, 2, 10, 0, tzinfo=dt.UTC)
    values = {"order": tag, "inv": f"L-{tag}", "amount": "10,00", "n": 3}
    text = "\n\n".join(_fill(rng, "es", 1200, values)) + "\n"
    headers = [
        f"From: {formataddr((customer.name, customer.address))}",
        f"To: {formataddr(SUPPORT)}",
        f"Subject: {_header(f'Reclamación {tag}', 'utf-8')}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: <lat.{tag}@latencia.example>",
        "MIME-Version: 1.0",
    ]
    return ("\r\n".join(headers) + "\r\n").encode() + _part(
        "text/plain", "utf-8", "quoted-printable", text
    )


def huge_message(size: int, seed: int = 9) -> bytes:
    """One mail of about `size` bytes: a short text and one large base64 attachment."""
    rng = random.Random(f"{seed}:huge")
    data = rng.randbytes(size * 57 // 78)  # base64: 57 bytes per 76-character CRLF line
    headers = [
        f"From: {formataddr(('Conceição Araújo', 'conceicao@cliente.example'), 'utf-8')}",
        f"To: {formataddr(SUPPORT)}",
        f"Subject: {_header('Vídeo do defeito – pedido 123456', 'utf-8')}",
        "Date: Mon, 06 May 2024 10:00:00 -0300",
        "Message-ID: <huge.1@cliente.example>",
        "MIME-Version: 1.0",
    ]
    text = _part("text/plain", "utf-8", "quoted-printable", "Segue o vídeo do defeito.\n")
    video = (
        b'Content-Type: video/mp4; name="defeito.mp4"\r\n'
        b'Content-Disposition: attachment; filename="defeito.mp4"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    ) + _crlf(base64.encodebytes(data))
    return ("\r\n".join(headers) + "\r\n").encode() + _multipart(
        "mixed", "huge-boundary-1", [text, video]
    )
