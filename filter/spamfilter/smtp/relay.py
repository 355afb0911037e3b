"""The next hop: an SMTP client on asyncio streams, driven command by command by a session.

Why a proxy, not store-and-forward
----------------------------------
SMTP gives one answer per recipient only at RCPT time; after DATA there is one answer
for the whole message (a per-recipient answer after DATA needs LMTP). A filter that
accepts every RCPT and relays at DATA must, when the next hop refuses some recipients,
either answer 451 for all (the MTA retries, those already delivered get a duplicate)
or answer 250 and bounce the others itself (a queue and a DSN generator the filter
does not have; without them the refusal is hidden and the mail lost).

So the filter is a proxy, like Postfix's before-queue ``smtpd_proxy_filter`` protocol:
each client session opens its own connection to the next hop at its first MAIL FROM
and forwards MAIL FROM and every RCPT TO as it arrives. The client gets the next hop's
own reply to each, so a refused recipient is refused to the client, with the next hop's
code and text, at the one moment SMTP can say it. Only recipients the next hop accepted
enter the envelope. At DATA the message is scored, then sent; the client's answer to
DATA is the next hop's answer, so 250 means the next hop has the message. Quarantine,
reject or tempfail end the next hop's transaction with RSET.

Anything that goes wrong with the next hop (refused connection, timeout, dropped
connection, malformed reply, 421) aborts the connection and raises ``RelayError``,
whose reply is ``451 4.4.x``: the MTA keeps the message and retries. The price of the
design is one next-hop connection per client session and a round trip per recipient.

Bytes: the message goes out as given (the session has already prepended our headers),
dot-stuffed after every LF, not only after CRLF: a bare LF followed by "." must not
end the message early at a lenient next hop (SMTP smuggling); RFC 5321 forbids bare LFs,
so only malformed mail can tell the difference.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spamfilter.smtp.endpoint import Endpoint

MAX_REPLY_LINES = 100
_DOT_AT_LINE_START = re.compile(rb"(?:^|(?<=\n))\.")
# What a next hop that breaks off, stalls or answers garbage raises while we talk to it.
_STREAM_ERRORS = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,  # a malformed reply
)
# MAIL FROM parameter -> the next-hop extension it needs.
_PARAMETER_EXTENSION = {"BODY": "8BITMIME", "SIZE": "SIZE", "SMTPUTF8": "SMTPUTF8"}


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: the code and its text lines."""

    code: int
    lines: tuple[str, ...] = ("",)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        """The reply as aiosmtpd pushes it (multi-line replies joined with CRLF)."""
        last = len(self.lines) - 1
        return "\r\n".join(
            f"{self.code}{' ' if index == last else '-'}{line}".rstrip()
            for index, line in enumerate(self.lines)
        )


class RelayError(Exception):
    """The next hop could not be used; ``reply`` is what the client gets (451)."""

    def __init__(self, detail: str, status: str = "4.4.2") -> None:
        super().__init__(detail)
        self.reply = Reply(451, (f"{status} next hop: {detail}",))


class NextHop(Protocol):
    """One connection to the next hop, used by one client session."""

    async def mail(self, sender: str, options: Sequence[str]) -> Reply: ...

    async def rcpt(self, recipient: str) -> Reply: ...

    async def data(self, message: bytes) -> Reply: ...

    async def rset(self) -> None: ...

    async def quit(self) -> None: ...

    def abort(self) -> None: ...


class Connector(Protocol):
    async def connect(self) -> NextHop: ...


class SmtpConnector:
    """Opens ESMTP connections to ``endpoint``; every step bounded by ``timeout`` seconds."""

    def __init__(self, endpoint: Endpoint, timeout: float, helo_name: str) -> None:
        self.endpoint, self.timeout, self.helo_name = endpoint, timeout, helo_name

    async def connect(self) -> SmtpNextHop:
        try:
            reader, writer = await asyncio.wait_for(self.endpoint.connect(), self.timeout)
        except (OSError, TimeoutError) as error:
            raise RelayError(
                f"cannot connect to {self.endpoint}: {_describe(error)}", "4.4.1"
            ) from None
        hop = SmtpNextHop(reader, writer, self.timeout)
        await hop.greet(self.helo_name)
        return hop


class SmtpNextHop:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader, self._writer, self._timeout = reader, writer, timeout
        self.extensions: set[str] = set()

    async def greet(self, helo_name: str) -> None:
        greeting = await self._step(self._read_reply())
        if greeting.code != 220:
            self._fail(f"greeting was {greeting}")
        reply = await self.command(f"EHLO {helo_name}")
        if reply.ok:
            self.extensions = {line.split(" ")[0].upper() for line in reply.lines[1:]}
            return
        reply = await self.command(f"HELO {helo_name}")
        if not reply.ok:
            self._fail(f"HELO answered {reply}")

    async def mail(self, sender: str, options: Sequence[str]) -> Reply:
        parameters = []
        for option in options:
            keyword = option.partition("=")[0].upper()
            if _PARAMETER_EXTENSION.get(keyword) in self.extensions:
                parameters.append(option)
            elif keyword == "SMTPUTF8":
                return Reply(553, ("5.6.7 the next hop does not support SMTPUTF8",))
        path = sender if sender == "<>" else f"<{sender}>"
        return await self.command(" ".join([f"MAIL FROM:{path}", *parameters]))

    async def rcpt(self, recipient: str) -> Reply:
        return await self.command(f"RCPT TO:<{recipient}>")

    async def data(self, message: bytes) -> Reply:
        """Send ``message`` (CRLF lines); the next hop's final reply (or its refusal of DATA)."""
        return await self._step(self._data(message))

    async def rset(self) -> None:
        await self.command("RSET")

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        except RelayError:
            pass  # the message is already answered; a lost QUIT reply changes nothing
        finally:
            self.abort()

    def abort(self) -> None:
        self._writer.close()

    async def _data(self, message: bytes) -> Reply:
        self._writer.write(b"DATA\r\n")
        reply = await self._read_reply()
        if reply.code != 354:
            return self._checked(reply)
        body = _DOT_AT_LINE_START.sub(b"..", message)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        self._writer.write(body + b".\r\n")
        await self._writer.drain()
        return self._checked(await self._read_reply())

    async def command(self, line: str) -> Reply:
        """Send one command line; its reply (RelayError if the connection fails)."""

        async def exchange() -> Reply:
            self._writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
            await self._writer.drain()
            return self._checked(await self._read_reply())

        return await self._step(exchange())

    async def _step(self, exchange) -> Reply:
        try:
            return await asyncio.wait_for(exchange, self._timeout)
        except RelayError:
            self.abort()
            raise
        except _STREAM_ERRORS as error:
            self.abort()
            raise RelayError(_describe(error)) from None

    def _checked(self, reply: Reply) -> Reply:
        if reply.code == 421:  # the next hop is closing the connection to us
            self._fail(f"closed the connection: {reply}")
        return reply

    def _fail(self, detail: str) -> None:
        self.abort()
        raise RelayError(detail)

    async def _read_reply(self) -> Reply:
        lines = []
        for _ in range(MAX_REPLY_LINES):
            raw = await self._reader.readuntil(b"\n")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            code, separator = text[:3], text[3:4]
            if not code.isdigit() or separator not in ("", " ", "-"):
                raise ValueError(f"malformed reply {text[:80]!r}")
            lines.append(text[4:])
            if separator != "-":
                return Reply(int(code), tuple(lines))
        raise ValueError(f"reply longer than {MAX_REPLY_LINES} lines")


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed"
    return str(error) or type(error).__name__
