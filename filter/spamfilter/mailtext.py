"""Turn a raw RFC 822 message into the text the model reads.

This is the one place where mail becomes model input: training calls it on every
corpus message and the filter on every message it relays, so the two can never read
mail differently. ``TEXT_VERSION`` goes into every model directory; bump it whenever
the output of ``email_to_text`` changes for any input, and the filter will refuse
models trained on another version.

What the model sees (DESIGN §3): ``Subject``, the ``From`` display name and address,
the attachment names and types, and the body (text/plain preferred, HTML turned into
text with the link domains kept). Trace and list headers (``Received``, ``List-*``,
``X-*``, dates, the mbox ``From `` line, ``[list]`` tags in the subject) are left out on
purpose: they describe how a
corpus was collected, not the mail, and a model that learns them fails elsewhere.

It never raises and bounds its work: at most ``MAX_PARSE_BYTES`` of the message are
parsed, at most ``MAX_PARTS`` MIME parts are visited and at most ``MAX_TEXT_CHARS``
characters come out, so a hostile message cannot stall the filter.
"""

from __future__ import annotations

import codecs
import html.parser
import re
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from urllib.parse import urlsplit

TEXT_VERSION = 1

MAX_PARSE_BYTES = 1 << 20  # 1 MiB: more than any text part the model would read
MAX_PARTS = 64  # MIME parts visited per message
MAX_DEPTH = 20  # multipart nesting followed
MAX_TEXT_CHARS = 20_000  # ~4,000 WordPiece tokens: far beyond any max_length we train with
MAX_HEADER_CHARS = 300

_WHITESPACE_RUN = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PARSER = BytesParser(policy=policy.default)
# "[ILUG] Re: [zzzzteana] ..." -> "Re: ...": a mailing list's tag names the list, not the mail.
_LIST_TAG = re.compile(r"^((?:(?:re|fwd?|aw)\s*:\s*)*)\[[^\]\n]{1,40}\]\s*", re.IGNORECASE)


def email_to_text(raw: bytes) -> str:
    """The model's text for one raw message (bytes as received, any line endings)."""
    try:
        message = _PARSER.parsebytes(raw[:MAX_PARSE_BYTES])
    except Exception:  # the parser is lenient; this guards against its rare crashes
        return _clean(raw[:MAX_TEXT_CHARS].decode("utf-8", "replace"))[:MAX_TEXT_CHARS]
    lines = [
        f"Subject: {_subject(message)}",
        f"From: {_sender(message)}",
    ]
    body: list[str] = []
    attachments: list[str] = []
    _collect(message, body, attachments, depth=0, budget=[MAX_PARTS])
    if attachments:
        lines.append("Attachments: " + "; ".join(attachments))
    lines.append("")
    lines.extend(body)
    return _clean("\n".join(lines))[:MAX_TEXT_CHARS]


def _header(message: Message, name: str) -> str:
    try:
        value = str(message.get(name) or "")
    except Exception:  # a malformed header can break the policy's parser
        value = _raw_header(message, name)
    if "\ufffd" in value:  # undeclared 8-bit bytes: decode them as undeclared body text is
        value = _without_surrogates(_raw_header(message, name))
    return _CONTROL.sub(" ", value)[:MAX_HEADER_CHARS]


def _subject(message: Message) -> str:
    subject = _header(message, "Subject")
    while True:
        untagged = _LIST_TAG.sub(r"\1", subject, count=1)
        if untagged == subject:
            return subject.strip()
        subject = untagged


def _raw_header(message: Message, name: str) -> str:
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return " ".join(str(value).split())
    return ""


def _sender(message: Message) -> str:
    try:
        header = message.get("From")
        addresses = getattr(header, "addresses", ())
        if addresses:
            first = addresses[0]
            name = first.display_name
            address = first.addr_spec
            return f"{name} <{address}>" if name else f"<{address}>"
        return str(header or "")[:MAX_HEADER_CHARS]
    except Exception:
        return _raw_header(message, "From")[:MAX_HEADER_CHARS]


def _collect(
    part: Message, body: list[str], attachments: list[str], depth: int, budget: list[int]
) -> None:
    """Walk the MIME tree depth-first, appending text to ``body`` and names to ``attachments``.

    In a multipart/alternative only the plain-text variant is read when there is one.
    ``budget`` is the number of parts still allowed to be visited (shared, mutable).
    """
    if budget[0] <= 0 or depth > MAX_DEPTH:
        return
    budget[0] -= 1
    content_type = _content_type(part)
    if part.is_multipart():
        children = _children(part)
        if content_type == "multipart/alternative":
            plain = [c for c in children if _content_type(c) == "text/plain"]
            children = plain[:1] or children[:1]
        for child in children:
            _collect(child, body, attachments, depth + 1, budget)
        return
    filename = _filename(part)
    if filename or not content_type.startswith("text/"):
        attachments.append(f"{filename or 'unnamed'} ({content_type})")
        return
    text = _decode_text(part)
    if content_type == "text/html":
        text = html_to_text(text)
    if text.strip():
        body.append(text)


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [child for child in payload if isinstance(child, Message)]
    if isinstance(payload, Message):
        return [payload]
    return []


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    return _CONTROL.sub(" ", str(name))[:MAX_HEADER_CHARS]


def _decode_text(part: Message) -> str:
    """Decode a leaf part's transfer encoding and charset; unknown charsets degrade gracefully."""
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
            if isinstance(content, str):
                return content[:MAX_TEXT_CHARS]
        except Exception:  # unknown charset, broken encoding: decode by hand below
            pass
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw_payload = part.get_payload()
        return raw_payload[:MAX_TEXT_CHARS] if isinstance(raw_payload, str) else ""
    return decode_bytes(payload[: MAX_TEXT_CHARS * 4], _charset(part))


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:
        return None


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes to text: the declared charset if Python knows it, else UTF-8, else cp1252."""
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _clean(text: str) -> str:
    text = _without_surrogates(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text)
    text = _WHITESPACE_RUN.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _without_surrogates(text: str) -> str:
    """Undo the ``surrogateescape`` the email package uses for raw 8-bit header bytes.

    Such lone surrogates are not valid text: tokenizers reject them. The bytes they stand
    for are decoded like any undeclared text (UTF-8, else cp1252).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "replace").decode("utf-8")


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML document, with each link's domain kept as ``[domain]``."""

    _SKIP = frozenset({"script", "style", "head", "title", "noscript", "template"})
    _BREAK = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.size = 0
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BREAK:
            self._emit("\n")
        if tag == "a":
            href = dict(attrs).get("href") or ""
            domain = _link_domain(href)
            if domain:
                self._emit(f" [{domain}] ")
        elif tag == "img":
            alt = dict(attrs).get("alt") or ""
            if alt:
                self._emit(f" {alt} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self._BREAK:
            self._emit("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self._emit(data)

    def _emit(self, text: str) -> None:
        if self.size < MAX_TEXT_CHARS:
            self.parts.append(text)
            self.size += len(text)


def _link_domain(href: str) -> str:
    try:
        host = urlsplit(href.strip()).hostname or ""
    except ValueError:
        return ""
    return host[:100]


def html_to_text(markup: str) -> str:
    """Visible text of ``markup``; never raises, whatever the nesting or breakage."""
    parser = _HTMLText()
    try:
        parser.feed(markup[: MAX_TEXT_CHARS * 5])
        parser.close()
    except Exception:
        pass
    return "".join(parser.parts)
