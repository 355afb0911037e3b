"""Message lines over 1,000 bytes: taken and relayed byte for byte, never refused with 500.

Through the daemon with real SMTP (smtplib, which sends long lines as they are) and a
real sink (aiosmtpd taking long lines, as Postfix's smtpd does); through a real Postfix
in ``test_postfix.py``. SMTP command lines keep aiosmtpd's limit.
"""

from __future__ import annotations

import asyncio
import base64
import email
import random
from email import policy

import pytest

from spamfilter.model.classifier import Classifier
from spamfilter.smtp.dataread import TooBig, read_message
from spamrig.clients import client, connect, our_prefix
from spamrig.daemon import filter_config, running_filter
from spamrig.sink import sink
from spamrig.synthetic import long_line_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

MAX_SIZE = 200_000  # the daemon's max_message_size here


@pytest.fixture(scope="module")
def rig(tiny_model_dir):
    """(sink handler, filter port): the tiny model's filter relaying to a sink."""
    with sink() as (captured, sink_port):
        config = filter_config(tiny_model_dir, sink_port, max_message_size=MAX_SIZE)
        with running_filter(config, Classifier(tiny_model_dir, precision="fp32")) as daemon:
            yield captured, daemon.smtp_address[1]


def relay(rig, raw: bytes) -> bytes:
    """Send ``raw``; what the sink received after our headers (asserted byte for byte)."""
    captured, port = rig
    before = len(captured.deliveries)
    with client(port) as smtp:
        assert smtp.sendmail("s@example.org", ["r@example.net"], raw, ["BODY=8BITMIME"]) == {}
    (delivery,) = captured.deliveries[before:]
    our_prefix(delivery.content, raw)
    return delivery.content


@pytest.mark.parametrize("length", [1_500, 10_000])
def test_a_long_body_line_is_relayed_byte_for_byte(rig, length):
    relay(rig, long_line_message(length))


def test_long_lines_in_header_html_and_base64_keep_the_mime_structure(rig):
    attachment = random.Random(5).randbytes(7_500)  # one 10,000-character base64 line
    html = b"<p>" + b"<span>cheap offer</span>" * 600 + b"</p>"  # 14,407 bytes, one line
    raw = (
        b"From: a <a@example.org>\r\nSubject: wide\r\nMIME-Version: 1.0\r\n"
        b"References: " + b" ".join(f"<{i}@example.org>".encode() for i in range(150)) + b"\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n\r\n'
        + base64.b64encode(attachment)
        + b"\r\n--b1--\r\n"
    )
    delivered = email.message_from_bytes(relay(rig, raw), policy=policy.default)
    part_html, part_data = delivered.iter_parts()
    assert part_html.get_content().rstrip("\r\n") == html.decode()
    assert part_data.get_content() == attachment
    assert len(delivered["References"].split()) == 150


def test_a_long_line_starting_with_a_dot_is_unstuffed_once(rig):
    relay(rig, b"Subject: dots\r\n\r\n." + b"." * 3_000 + b"\r\n.x" + b"y" * 2_000 + b"\r\n")


def test_a_line_over_max_message_size_gets_552_and_the_session_goes_on(rig):
    captured, port = rig
    before = len(captured.deliveries)
    with connect(port) as session:
        assert session.transaction(long_line_message(MAX_SIZE + 10)) == 552
        assert session.transaction(long_line_message(5_000)) == 250
        # Command lines keep their limit (docs/hardening.md): 500, and the session goes on.
        assert session.command(b"MAIL FROM:<" + b"a" * 5_000 + b"@example.org>")[0] == 500
        assert session.command(b"NOOP")[0] == 250
    assert len(captured.deliveries) == before + 1


@pytest.mark.parametrize("limit", [4, 7, 64])
def test_read_message_joins_the_pieces_of_lines_longer_than_the_reader_limit(limit):
    """The line-piece logic alone, with tiny reader limits: every line is split many ways."""
    lines = [
        b"short",
        b"." * 40,
        b".x" + b"y" * 30,
        b"",
        b"z" * 13 + b"." + b"w" * 9,
        b"..",
        b"end",
    ]
    block = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + b"NOOP\r\n"

    async def read(size_limit):
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(block)
        reader.feed_eof()
        message = await read_message(reader, size_limit)
        return message, await reader.read()

    message, following = asyncio.run(read(None))
    unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
    assert message == b"".join(line + b"\r\n" for line in unstuffed)
    assert following == b"NOOP\r\n"  # the reader stops right after the end of the message
    with pytest.raises(TooBig):
        asyncio.run(read(50))
