"""Hostile messages: named pathological cases and a hypothesis strategy for random ones.

Shared by ``tests/test_hostile_input.py`` (email_to_text and the daemon) and
``benchmarks/fuzz_mailtext.py`` (its seed corpus).
"""

from __future__ import annotations

import base64
import quopri
from collections.abc import Callable
from email.message import EmailMessage

from hypothesis import strategies as st

CHARSETS = (
    *("utf-8", "us-ascii", "iso-8859-1", "windows-1252", "koi8-r", "shift_jis", "utf-16"),
    *("utf-7", "x-no-such-charset", "utf-8\x00", "../../etc/passwd", ""),
)
ENCODINGS = ("7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus")
TYPES = ("text/plain", "text/html", "text/enriched", "application/pdf", "message/rfc822")
SUBTYPES = ("mixed", "alternative", "related", "digest", "report", "signed")


def nested(depth: int) -> bytes:
    """``depth`` multiparts, each the only child of the one before."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"Subject: deep\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closing


def multipart(parts: list[bytes], boundary: bytes = b"b") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
        b"" + body + b"--" + boundary + b"--\r\n"
    )


def _html(markup: bytes) -> bytes:
    return b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup


RFC2231_FLOOD = b"Content-Type: text/plain; " + b"a*0*=utf-8''%41; " * 240 + b"\r\n\r\nx"

# name -> a function building the message (some are large: built only when used)
PATHOLOGICAL: dict[str, Callable[[], bytes]] = {
    "nesting 1,000 levels": lambda: nested(1000),
    "100,000 headers": lambda: b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"\r\nx",
    "100,000 Subject headers": lambda: b"Subject: s\r\n" * 100_000 + b"\r\nbody\r\n",
    "a single 50 MB line": lambda: b"Subject: one line\r\n\r\n" + b"a" * 50_000_000,
    "20,000 flat parts": lambda: multipart([b"Content-Type: text/plain\r\n\r\nx"] * 20_000),
    "128 parts of 240 RFC 2231 parameters": lambda: multipart([RFC2231_FLOOD] * 128),
    "Subject of 100,000 encoded words": lambda: (
        b"Subject: " + b"=?utf-8?b?QUFB?= " * 100_000 + b"\r\n\r\nx\r\n"
    ),
    "From of 200,000 addresses": lambda: b"From: " + b"a@b, " * 200_000 + b"\r\n\r\nx\r\n",
    "invalid base64": lambda: (
        b"Subject: b64\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b"!!*==\r\nQQ=\r\n" * 50_000
    ),
    "invalid quoted-printable": lambda: (
        b"Subject: qp\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"=ZZ=\r\n=\r\n=0" * 50_000
    ),
    "NUL bytes": lambda: b"Subject: a\x00b\r\nFrom: \x00<x@\x00y>\r\n\r\n\x00" * 10_000,
    "mixed line endings": lambda: (
        b"Subject: m\rFrom: a@b\n\r\nTo: c\r\r\n\nbody\rline\n.\n..\r\n" * 5
    ),
    "header injection": lambda: (
        b"Subject: hi\r\nBcc: victim@example.net\r\n"
        b"Subject: =?utf-8?q?a=0D=0ABcc:_x@y?=\r\nFrom: a@b\r\n"
        b"\tX-Spam-Flag: NO\r\nX-Spam-Flag: NO\r\n\r\n.\r\nMAIL FROM:<x@y>\r\n"
    ),
    "unknown charset": lambda: (
        b"Subject: =?x-nope?q?abc?=\r\nContent-Type: text/plain; charset=x-nope\r\n\r\n\xff\xfe"
    ),
    "lying charset": lambda: (
        b"Subject: =?utf-8?b?/w==?=\r\nContent-Type: text/plain; charset=utf-16\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n\xe9t\xe9 \xff\x00\xd8"
    ),
    "HTML nested 200,000 deep": lambda: _html(b"<div><b><a href='http://x.test/'>" * 70_000),
    "HTML unclosed comment and script": lambda: _html(b"<!--" + b"<script>" * 100_000),
    "HTML 300,000 attributes": lambda: _html(b"<a " + b"href=http://a.b/ " * 150_000 + b">"),
}


@st.composite
def leaf(draw: st.DrawFn) -> EmailMessage:
    part = EmailMessage()
    content_type = draw(st.sampled_from(TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    part["Content-Type"] = f'{content_type}; charset="{charset}"'
    encoding = draw(st.sampled_from(ENCODINGS))
    part["Content-Transfer-Encoding"] = encoding
    if draw(st.booleans()):
        name = draw(st.text(max_size=20).map(_one_line))
        part["Content-Disposition"] = f'attachment; filename="{name}"'
    body = draw(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)  # else: not base64 at all
    elif encoding == "quoted-printable" and draw(st.booleans()):
        body = quopri.encodestring(body)
    part.set_payload(body.decode("latin-1"))  # one character per byte, as _flatten writes
    return part


def _tree(children: st.SearchStrategy[EmailMessage]) -> st.SearchStrategy[EmailMessage]:
    @st.composite
    def build(draw: st.DrawFn) -> EmailMessage:
        container = EmailMessage()
        subtype = draw(st.sampled_from(SUBTYPES))
        container["Content-Type"] = f'multipart/{subtype}; boundary="{draw(st.uuids()).hex}"'
        for child in draw(st.lists(children, max_size=4)):
            container.attach(child)
        return container

    return build()


def _flatten(part: EmailMessage) -> bytes:
    """The tree as bytes, written here: the email package's generator refuses (or repairs)
    much of what a hostile sender writes, e.g. raw 8-bit text under a 7bit label."""
    head = b"".join(
        f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        for name, value in part.raw_items()
    )
    payload = part.get_payload()
    if isinstance(payload, list):
        delimiter = b"--" + str(part.get_boundary()).encode()
        body = b"".join(delimiter + b"\r\n" + _flatten(child) + b"\r\n" for child in payload)
        body += delimiter + b"--\r\n"
    else:
        body = str(payload or "").encode("latin-1")
    return head + b"\r\n" + body


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())  # the email package refuses line breaks in headers


MUTATIONS = ("none", "nul", "bare-lf", "bare-cr", "truncate", "inject")


def _mutate(raw: bytes, mutation: str, position: int) -> bytes:
    cut = position % (len(raw) + 1)
    if mutation == "nul":
        return raw[:cut] + b"\x00" + raw[cut:]
    if mutation == "bare-lf":
        return raw[:cut] + raw[cut:].replace(b"\r\n", b"\n", 3)
    if mutation == "bare-cr":
        return raw[:cut] + raw[cut:].replace(b"\r\n", b"\r", 3)
    if mutation == "truncate":
        return raw[:cut]
    if mutation == "inject":
        return raw[:cut] + b"\r\nBcc: x@y\r\n.\r\nRCPT TO:<z@w>\r\n" + raw[cut:]
    return raw


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    """A random MIME tree (email package), then a random byte-level mutation."""
    tree = st.recursive(leaf(), _tree, max_leaves=8)
    message = draw(tree)
    subject, sender = (draw(st.text(max_size=60).map(_one_line)) for _ in range(2))
    for name, value in (("Subject", subject), ("From", sender)):
        try:
            message[name] = value
        except Exception:  # the email package cannot parse it (e.g. "<"): store it as is
            message.set_raw(name, value)
    raw = _flatten(message)
    return _mutate(raw, draw(st.sampled_from(MUTATIONS)), draw(st.integers(0, 1 << 16)))
