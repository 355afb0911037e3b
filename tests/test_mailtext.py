"""email_to_text on messages written for the tests: every encoding, structure and breakage."""

from __future__ import annotations

import base64
import time
import tracemalloc

from spamfilter.model.mailtext import MAX_TEXT_CHARS, email_to_text


def mime(headers: str, body: bytes | str) -> bytes:
    body = body.encode() if isinstance(body, str) else body
    return headers.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def test_reads_subject_sender_and_plain_body():
    text = email_to_text(
        mime("From: Alice Example <alice@example.org>\nSubject: Lunch?", "Noon at the usual place.")
    )
    assert text.splitlines()[:2] == ["Subject: Lunch?", "From: Alice Example <alice@example.org>"]
    assert "Noon at the usual place." in text


def test_leaves_out_trace_and_list_headers_and_mbox_line():
    raw = (
        b"From spammer@example.com  Tue Aug  6 11:52:20 2002\n"
        b"Received: from mx.collector.example by host\n"
        b"Return-Path: <bounce@example.com>\nList-Id: <ilug.linux.ie>\n"
        b"X-Mailer: Collector 1.0\nDate: Tue, 6 Aug 2002 11:52:20 +0100\n"
        b"Subject: [ILUG] Re: [other] hello\nFrom: a@example.com\n\nbody\n"
    )
    text = email_to_text(raw)
    for leaked in ("collector", "ilug", "2002", "bounce", "Collector", "ILUG", "[other]"):
        assert leaked not in text
    assert text.startswith("Subject: Re: hello\n")


def test_multipart_alternative_prefers_plain_text():
    raw = mime(
        'Subject: alt\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"',
        "--b\r\nContent-Type: text/plain\r\n\r\nplain version\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n--b--\r\n",
    )
    text = email_to_text(raw)
    assert "plain version" in text and "html version" not in text


def test_html_only_becomes_text_with_link_domains_and_no_script():
    raw = mime(
        "Subject: offer\nContent-Type: text/html; charset=utf-8",
        "<html><head><style>p{color:red}</style><script>evil()</script></head><body>"
        '<p>Cheap&nbsp;<b>pills</b></p><a href="http://pharma.example.net/buy?x=1">here</a>'
        '<img src="x.png" alt="BUY NOW"></body></html>',
    )
    text = email_to_text(raw)
    assert "Cheap pills" in text
    assert "[pharma.example.net]" in text and "BUY NOW" in text
    assert "evil" not in text and "color" not in text


def test_base64_and_quoted_printable_bodies():
    encoded = base64.encodebytes("Grüße aus Köln".encode()).decode()
    raw_b64 = mime(
        "Subject: b64\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64",
        encoded,
    )
    raw_qp = mime(
        "Subject: qp\nContent-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable",
        "caf=E9 cr=E8me soft=\r\nbreak",
    )
    assert "Grüße aus Köln" in email_to_text(raw_b64)
    assert "café crème softbreak" in email_to_text(raw_qp)


def test_national_charsets_in_body_and_encoded_subject():
    cases = {
        "latin-1": "Ærlig talt, på søndag",
        "koi8-r": "Привет, как дела",
        "gb2312": "你好，世界",
    }
    for charset, words in cases.items():
        subject = "=?utf-8?b?" + base64.b64encode(words.encode()).decode() + "?="
        raw = mime(
            f"Subject: {subject}\nContent-Type: text/plain; charset={charset}",
            words.encode(charset),
        )
        text = email_to_text(raw)
        assert f"Subject: {words}" in text, charset
        assert words in text.split("\n", 3)[-1], charset


def test_unknown_and_lying_charsets_degrade_without_error():
    unknown = mime("Subject: x\nContent-Type: text/plain; charset=x-no-such", "plain words")
    lying = mime("Subject: y\nContent-Type: text/plain; charset=us-ascii", "naïve".encode())
    assert "plain words" in email_to_text(unknown)
    assert "na" in email_to_text(lying)


def test_missing_duplicated_and_broken_headers():
    assert email_to_text(b"just a body line\n") == "Subject:\nFrom:\n\njust a body line"
    dup = email_to_text(mime("Subject: one\nSubject: two\nFrom: <>\nFrom: =?bogus?q?x?=", "b"))
    assert dup.startswith("Subject: one")
    broken = email_to_text(mime('From: "unterminated <a@b\nSubject: =?utf-8?b?!!!?=', "b"))
    assert "Subject:" in broken


def test_eight_bit_garbage_and_nul_bytes():
    raw = b"Subject: \xff\xfe\x00bad\nFrom: \x80\x81@\xc3\n\n" + bytes(range(256)) * 40
    text = email_to_text(raw)
    assert isinstance(text, str) and "\x00" not in text
    text.encode("utf-8")  # no lone surrogates: tokenizers reject them


def test_raw_eight_bit_headers_are_decoded_not_escaped():
    text = email_to_text("Subject: Grüße\nFrom: Jürgen <j@example.de>\n\nx".encode())
    assert text.startswith("Subject: Grüße\nFrom: Jürgen <j@example.de>")
    latin = email_to_text("Subject: café\n\nx".encode("latin-1"))
    assert latin.startswith("Subject: café")


def test_nested_rfc822_message_is_read_and_attachments_listed():
    inner = mime("Subject: inner\nFrom: inner@example.org", "forwarded words")
    raw = mime(
        'Subject: outer\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="o"',
        b"--o\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        b"--o\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n"
        b"--o\r\nContent-Type: application/pdf; name=invoice.pdf\r\n"
        b"Content-Disposition: attachment; filename=invoice.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--o--\r\n",
    )
    text = email_to_text(raw)
    assert "see below" in text and "forwarded words" in text
    assert "Attachments: invoice.pdf (application/pdf)" in text
    assert "JVBER" not in text


def test_empty_message():
    assert email_to_text(b"") == "Subject:\nFrom:"


def test_twenty_megabyte_message_is_bounded_in_time_and_memory():
    raw = mime("Subject: big\nFrom: a@example.org", b"spam words " * (2 * 1024 * 1024))
    assert len(raw) > 20_000_000
    tracemalloc.start()
    started = time.perf_counter()
    text = email_to_text(raw)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(text) <= MAX_TEXT_CHARS
    assert elapsed < 5.0, elapsed  # generous: ~0.1 s here; a regression would take minutes
    assert peak < 64 * 1024 * 1024, peak
