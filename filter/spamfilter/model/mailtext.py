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

It never raises and bounds its work, so a hostile message cannot stall the filter: at
most ``MAX_PARSE_BYTES`` of the message are parsed, of which at most ``MAX_HEADER_LINES``
header lines and ``MAX_PARSED_PARTS`` MIME parts (the parser's cost grows with the square
of the nesting depth); a header value is parsed from its first ``MAX_RAW_HEADER_CHARS``
characters, and at most ``MAX_HEADER_PARSE_CHARS`` of them per message; at most
``MAX_PARTS`` parts are read and at most ``MAX_TEXT_CHARS`` characters come out. A message
within these bounds reads exactly as the whole message; beyond them, as if it ended
there. Stated bounds, tested in ``tests/test_hostile_input.py``: under 2 s of CPU and
under 100 MB of memory for any input, a 50 MB message included (only its first 1 MiB is
looked at).
"""

from __future__ import annotations

import codecs
import html.parser
import re
from email import policy
from email.feedparser import FeedParser, headerRE
from email.message import EmailMessage, Message
from email.policy import EmailPolicy
from typing import Any
from urllib.parse import urlsplit

TEXT_VERSION = 1

MAX_PARSE_BYTES = 1 << 20  # 1 MiB: more than any text part the model would read
MAX_PARTS = 64  # MIME parts visited per message
MAX_DEPTH = 20  # multipart nesting followed
MAX_TEXT_CHARS = 20_000  # ~4,000 WordPiece tokens: far beyond any max_length we train with
MAX_HEADER_CHARS = 300
MAX_PARSED_PARTS = 64  # MIME parts the parser builds (1,000 nested levels took 75 s)
MAX_HEADER_LINES = 5_000  # header lines parsed (each costs ~25 µs; 100,000 took 9 s)
MAX_RAW_HEADER_CHARS = 4_096  # of one header value, parsed (far more than MAX_HEADER_CHARS)
MAX_HEADER_PARSE_CHARS = 32_768  # of all header values fetched, parsed (~15 µs a character)
# A minimal header block that says "this is UTF-8 text": a bare text becomes a message
# whose body ``email_to_text`` decodes as such (its Subject and From stay empty).
TEXT_PLAIN_HEADERS = (
    b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n\n"
)
# Characters fed to the parser at a time: the feed parser's result does not depend on
# the chunking, and small chunks let it stop soon after MAX_PARSED_PARTS.
_PARSE_CHUNK = 1024

_WHITESPACE_RUN = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# "[ILUG] Re: [zzzzteana] ..." -> "Re: ...": a mailing list's tag names the list, not the mail.
_LIST_TAG = re.compile(r"^((?:(?:re|fwd?|aw)\s*:\s*)*)\[[^\]\n]{1,40}\]\s*", re.IGNORECASE)


def plain_text_message(body: bytes) -> bytes:
    """``body`` (UTF-8 text) as a minimal text/plain message, for readers of whole messages."""
    return TEXT_PLAIN_HEADERS + body


def email_to_text(raw: bytes) -> str:
    """The model's text for one raw message (bytes as received, any line endings)."""
    try:
        message = _parse(raw)
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


class _BoundedPolicy(EmailPolicy):
    """``policy.default``, with a budget for parsing header values, for one message.

    The header registry's parsers are slow on long values (a Content-Type with 240
    RFC 2231 parameters takes 60 ms) and the parser fetches Content-Type several times
    per part: each value is parsed once per message, from its first MAX_RAW_HEADER_CHARS
    characters, and once MAX_HEADER_PARSE_CHARS characters were parsed, the rest read as
    empty (a Content-Type then defaults to text/plain).
    """

    parsed: dict[tuple[str, str], Any] | None = None  # (name, raw value) -> header
    budget: list[int] | None = None  # characters still to parse (shared, mutable)

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if not isinstance(value, str) or self.parsed is None or self.budget is None:
            return super().header_fetch_parse(name, value)
        header = self.parsed.get((name, value))
        if header is None:
            bounded = value[:MAX_RAW_HEADER_CHARS]
            self.budget[0] -= len(bounded)
            bounded = bounded if self.budget[0] >= 0 else ""
            header = self.parsed[name, value] = super().header_fetch_parse(name, bounded)
        return header


_HEADER_FACTORY = policy.default.header_factory


class _PartCounter:
    """The parser's message factory, counting the parts it builds."""

    def __init__(self) -> None:
        self.parts = 0

    def __call__(self, policy: EmailPolicy) -> EmailMessage:
        self.parts += 1
        return EmailMessage(policy=policy)


def _parse(raw: bytes) -> Message:
    """``BytesParser(policy=...).parsebytes``, stopping at the bounds of the module docstring.

    The feed parser is incremental, so a message within the bounds parses exactly as in
    one piece; past ``MAX_PARSED_PARTS`` it stops being fed, and ``close`` ends every open
    part (as for a truncated message).
    """
    text = _cut_header_lines(raw[:MAX_PARSE_BYTES]).decode("ascii", "surrogateescape")
    counter = _PartCounter()
    bounded = _BoundedPolicy(
        parsed={}, budget=[MAX_HEADER_PARSE_CHARS], header_factory=_HEADER_FACTORY
    )
    parser = FeedParser(counter, policy=bounded)
    for start in range(0, len(text), _PARSE_CHUNK):
        parser.feed(text[start : start + _PARSE_CHUNK])
        if counter.parts > MAX_PARSED_PARTS:
            break
    return parser.close()


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)?")


def _cut_header_lines(raw: bytes) -> bytes:
    """``raw`` up to its ``MAX_HEADER_LINES``-th header line.

    Header blocks are found as the feed parser finds them: one at the start and one
    after each line starting with ``--`` (a MIME delimiter), each ending at the first
    line that is not a header line. Few messages hold even 500 header lines, and the
    colon count skips the scan for them.
    """
    if raw.count(b":") + raw.count(b"\n ") + raw.count(b"\n\t") < MAX_HEADER_LINES:
        return raw
    seen = 0
    in_headers = True
    for match in _LINE.finditer(raw):
        line = match.group()
        if not line:
            break
        if in_headers:
            in_headers = headerRE.match(line.decode("latin-1")) is not None
            seen += in_headers
            if seen > MAX_HEADER_LINES:
                return raw[: match.start()]
        in_headers = in_headers or line.startswith(b"--")
    return raw


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
