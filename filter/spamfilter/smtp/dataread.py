"""Reading the message after DATA: lines of any length, a bound on the whole message only.

aiosmtpd refuses a message with a line over 1,000 bytes (its ``line_length_limit``,
RFC 5321 4.5.3.1.6) with ``500 Line too long``: a permanent error, which after the
queue becomes a bounce of mail the MTA had already accepted. Postfix takes lines of
any length (its smtpd splits those over ``line_length_limit``, 2,048, into records and
joins them again on delivery), and badly generated HTML mail has such lines, so a
content filter must take them too. ``read_message`` reads DATA as aiosmtpd does (one
line at a time, dot-unstuffed, the message bounded by ``max_message_size``), except
that a line longer than the stream reader's limit arrives in pieces instead of being
refused. The reader keeps aiosmtpd's 1,001-byte limit, which still bounds every SMTP
command line (a separate defence, docs/hardening.md).
"""

from __future__ import annotations

import asyncio

END = b".\r\n"


class TooBig(Exception):
    """The message is over the size limit; it was read to its end and discarded."""


async def read_message(reader: asyncio.StreamReader, size_limit: int | None) -> bytes:
    """The message up to its terminating ``.`` line, dot-unstuffed (RFC 5321 4.5.2).

    Raises TooBig once the whole message (as sent, stuffing and CRLFs included) was
    longer than ``size_limit`` bytes; what came after the limit was read but not kept.
    """
    message = bytearray()
    size = 0
    at_line_start = True
    while True:
        try:
            piece = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as error:  # a long line: take what is buffered
            piece = await reader.read(error.consumed)
        if not piece:
            raise ConnectionResetError("connection closed during DATA")
        if at_line_start and piece == END:
            break
        size += len(piece)
        if size_limit is not None and size > size_limit:
            message.clear()  # too big: read on to the end, keep nothing
        else:
            message += piece[1:] if at_line_start and piece.startswith(b".") else piece
        at_line_start = piece.endswith(b"\r\n")
    if size_limit is not None and size > size_limit:
        raise TooBig(f"{size} bytes")
    return bytes(message)
