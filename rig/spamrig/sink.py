"""The next hop, as tests need it: a capturing sink, and a scripted one that misbehaves.

Each runs on 127.0.0.1 with an ephemeral port (the sink also on a Unix socket), on an
event loop in a thread of its own (``LoopThread``), so tests drive the filter with plain
blocking ``smtplib``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session

from spamrig import LOCALHOST, WAIT


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes


@dataclass
class SinkBehaviour:
    """How the sink answers: refused recipients, delays (seconds) at MAIL and DATA."""

    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply
    mail_delay: float = 0.0
    data_delay: float = 0.0


class SinkHandler:
    def __init__(self, behaviour: SinkBehaviour) -> None:
        self.behaviour = behaviour
        self.deliveries: list[Delivery] = []
        self.commands: list[str] = []

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.commands.append("MAIL")
        await asyncio.sleep(self.behaviour.mail_delay)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.commands.append("RCPT")
        if address in self.behaviour.refuse:
            return self.behaviour.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self.commands.append("RSET")
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.commands.append("QUIT")
        return "221 Bye"

    async def handle_DATA(self, server, session: Session, envelope: Envelope):
        self.commands.append("DATA")
        await asyncio.sleep(self.behaviour.data_delay)
        self.deliveries.append(
            Delivery(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                list(envelope.mail_options),
                envelope.original_content,
            )
        )
        return "250 2.0.0 Ok: queued as SINK"


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = WAIT):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self, server: asyncio.Server) -> None:
        """Close ``server`` on the loop's own thread, then stop the loop.

        asyncio.Server is not thread-safe: closing it from the test thread raced with the
        loop finishing a connection (seen under SIGKILL load in a clean-clone CI run).
        """

        async def close() -> None:
            server.close()

        self.run(close())
        self.stop()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


class SinkSMTP(SMTP):
    """aiosmtpd taking message lines of any length the tests send (64 MiB), as Postfix's
    smtpd takes any length (it splits them into records and joins them again on delivery)."""

    line_length_limit = 1 << 26


@contextmanager
def sink(
    behaviour: SinkBehaviour | None = None, unix_path: str = ""
) -> Iterator[tuple[SinkHandler, int]]:
    """A capturing SMTP server (aiosmtpd, 8BITMIME/SMTPUTF8/SIZE); yields (handler, port).

    With ``unix_path`` it listens on that Unix socket instead (and yields port 0).
    """
    handler = SinkHandler(behaviour or SinkBehaviour())
    runner = LoopThread()

    async def start() -> asyncio.Server:
        def protocol() -> SMTP:
            return SinkSMTP(handler, enable_SMTPUTF8=True, hostname="sink", loop=runner.loop)

        if unix_path:
            return await runner.loop.create_unix_server(protocol, unix_path)
        return await runner.loop.create_server(protocol, LOCALHOST, 0)

    server = runner.run(start())
    try:
        yield handler, 0 if unix_path else server.sockets[0].getsockname()[1]
    finally:
        runner.close(server)


# A misbehaving next hop ---------------------------------------------------------------------
@dataclass
class NextHopScript:
    """What a scripted next hop says, and where in the message it stops."""

    greeting: bytes = b"220 hop ESMTP"
    data_reply: bytes = b"250 2.0.0 queued"
    cut_after: int | None = None  # close the connection after this many message bytes
    stall_after: int | None = None  # stop reading and answering after this many


@dataclass
class NextHopLog:
    received: list[bytearray] = field(default_factory=list)  # message bytes per DATA
    open_connections: int = 0


@contextmanager
def scripted_next_hop(script: NextHopScript) -> Iterator[tuple[NextHopLog, int]]:
    """A minimal SMTP server (250 to every command) that misbehaves as ``script`` says."""
    hop = NextHopLog()
    runner = LoopThread()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hop.open_connections += 1
        try:
            writer.write(script.greeting + b"\r\n")
            while script.greeting.startswith(b"220") and (line := await reader.readline()):
                if line[:4].upper() == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                if line[:4].upper() != b"DATA":
                    writer.write(b"250 ok\r\n")
                    continue
                writer.write(b"354 go on\r\n")
                if not await receive(reader, writer):
                    break
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            hop.open_connections -= 1

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one message; False where the script ends the connection."""
        data = bytearray()
        hop.received.append(data)
        while not data.endswith(b"\r\n.\r\n"):
            chunk = await reader.read(4096)
            if not chunk:
                return False
            data += chunk
            if script.cut_after is not None and len(data) >= script.cut_after:
                return False
            if script.stall_after is not None and len(data) >= script.stall_after:
                while await reader.read(4096):  # silent until the filter gives up
                    pass
                return False
        writer.write(script.data_reply + b"\r\n")
        return True

    server = runner.run(asyncio.start_server(session, LOCALHOST, 0))
    try:
        yield hop, server.sockets[0].getsockname()[1]
    finally:
        runner.close(server)
