"""SMTP clients for the tests: smtplib, raw sessions for what smtplib will not send, load.

``send_load`` runs many concurrent clients on one event loop and reports every outcome,
so ``lost`` can prove that each message answered 250 arrived exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import re
import smtplib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from spamfilter.smtp.policy import strip_spam_headers
from spamrig import LOCALHOST, WAIT
from spamrig.sink import Delivery


def client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(LOCALHOST, port, local_hostname="client.test", timeout=WAIT)


class UnixSMTP(smtplib.SMTP):
    """smtplib's SMTP client over a Unix socket: ``UnixSMTP("/path/to.sock")``."""

    def __init__(self, path: str) -> None:
        super().__init__(local_hostname="client.test", timeout=WAIT)
        self.connect(path)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(timeout)
        unix.connect(host)
        return unix


def send(
    port: int,
    raw: bytes,
    recipients: Sequence[str] = ("user@example.net",),
    sender: str = "sender@example.org",
    **kw,
) -> dict:
    """Send one message; the refused-recipients dict smtplib returns."""
    with client(port) as smtp:
        return smtp.sendmail(sender, list(recipients), raw, **kw)


def spam_headers(content: bytes) -> dict[str, str]:
    """The X-Spam-* headers at the top of a delivered message."""
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return dict(re.findall(r"^(X-Spam-[\w-]+): (.*?)\r?$", head, re.MULTILINE))


def our_prefix(content: bytes, original: bytes) -> bytes:
    """What the filter put before ``original``; asserts the rest is byte for byte."""
    assert content.endswith(original), "the message body changed"
    return content[: len(content) - len(original)]


# Raw SMTP, for what smtplib will not send -------------------------------------------------
class RawSession:
    """SMTP on a plain socket: pipelined, slow, malformed or abandoned dialogues."""

    def __init__(self, port: int, timeout: float = WAIT, source: str = "") -> None:
        self.sock = socket.create_connection(
            (LOCALHOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.stream = self.sock.makefile("rb")
        self.greeted = False

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        """The next (multi-line) reply: (code, text of its last line); (0, b'') once closed.

        A server that closes with the client's data unread resets the connection (RST):
        that counts as closed too.
        """
        while True:
            try:
                line = self.stream.readline()
            except ConnectionResetError:
                line = b""
            if not line:
                return 0, b""
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].rstrip(b"\r\n")

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def transaction(self, raw: bytes, recipients: Sequence[str] = ("user@example.net",)) -> int:
        """EHLO (once), MAIL, RCPT, DATA and ``raw`` as a strict MTA sends it: the DATA reply."""
        if not self.greeted:
            assert self.command(b"EHLO client.test")[0] == 250
            self.greeted = True
        self.command(b"MAIL FROM:<sender@example.org>")
        for recipient in recipients:
            self.command(f"RCPT TO:<{recipient}>".encode())
        code = self.command(b"DATA")[0]
        if code != 354:
            return code
        self.send(data_block(raw))
        return self.reply()[0]


def connect(port: int, **kw) -> RawSession:
    """A RawSession past the greeting (asserted 220)."""
    session = RawSession(port, **kw)
    assert session.reply()[0] == 220
    return session


def data_block(raw: bytes) -> bytes:
    """``raw`` dot-stuffed (after CRLF only, as RFC 5321 says) and terminated."""
    stuffed = re.sub(rb"(?:^|(?<=\r\n))\.", b"..", raw)
    return stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def relayed_as(raw: bytes) -> bytes:
    """What the next hop stores after our X-Spam-* headers when a client sent ``raw``.

    Byte for byte, except: a missing final CRLF is added (SMTP ends DATA with a line),
    incoming X-Spam-* fields are removed, and a "." after a bare LF gains a second one:
    the relay stuffs after every LF (against SMTP smuggling), while a CRLF-only next hop
    such as this sink (aiosmtpd) unstuffs after CRLF only.
    """
    content = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    return re.sub(rb"(?<!\r)\n\.", b"\n..", strip_spam_headers(content))


# Load: many concurrent clients on one event loop --------------------------------------------
@dataclass
class Outcome:
    """How one message fared: the DATA reply code, or 0 when the session broke first."""

    index: int
    code: int = 0
    seconds: float = 0.0


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def _client(port: int, queue: asyncio.Queue, outcomes: list[Outcome]) -> None:
    """One MTA-like connection: sends queued messages until the queue is empty."""
    writer = None
    try:
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        await _reply(reader)
        writer.write(b"EHLO load.test\r\n")
        await _reply(reader)
        while not queue.empty():
            index, raw = queue.get_nowait()
            outcome = Outcome(index)
            outcomes.append(outcome)
            started = time.perf_counter()
            writer.write(b"MAIL FROM:<load@example.org>\r\nRCPT TO:<user@example.net>\r\nDATA\r\n")
            codes = [await _reply(reader) for _ in range(3)]  # pipelined
            if codes[2] != 354:
                outcome.code = next(code for code in codes if code >= 400)
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(data_block(raw))
            outcome.code = await _reply(reader)
            outcome.seconds = time.perf_counter() - started
    except (OSError, ConnectionError, ValueError):
        pass  # the outcome in flight keeps code 0: the sender still holds that message
    finally:
        if writer is not None:
            writer.close()


async def send_load(port: int, messages: Sequence[bytes], clients: int) -> list[Outcome]:
    """Send ``messages`` over ``clients`` concurrent connections; one Outcome per attempt.

    A message whose session broke is not retried: it counts as held by the sender.
    """
    queue: asyncio.Queue = asyncio.Queue()
    for item in enumerate(messages):
        queue.put_nowait(item)
    outcomes: list[Outcome] = []
    await asyncio.gather(*(_client(port, queue, outcomes) for _ in range(clients)))
    return outcomes


def numbered_message(index: int, size: int = 600) -> bytes:
    """A message that names itself (``Message-ID: <index@load>``), about ``size`` bytes."""
    line = b"meeting notes and the quarterly report, with the figures\r\n"  # 58 bytes
    body = line * (size // len(line) + 1)
    return (
        f"From: load <load@example.org>\r\nSubject: load {index}\r\n"
        f"Message-ID: <{index}@load>\r\n\r\n".encode()
        + body
    )


def delivered_ids(deliveries: Sequence[Delivery]) -> list[int]:
    """The numbers of the numbered messages the sink holds (one per delivery)."""
    return [int(re.search(rb"Message-ID: <(\d+)@load>", d.content).group(1)) for d in deliveries]


def lost(outcomes: Sequence[Outcome], deliveries: Sequence[Delivery]) -> list[int]:
    """Messages answered 250 that the sink does not hold exactly once (must be empty)."""
    held = collections.Counter(delivered_ids(deliveries))
    return [o.index for o in outcomes if o.code == 250 and held[o.index] != 1]
