"""Two-server test rig for the filter: a capturing sink (the next hop) and the filter.

Both run on 127.0.0.1 with ephemeral ports, each on an event loop in a thread of its own,
so tests drive them with plain blocking ``smtplib`` from the test thread.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from spamfilter.config import FilterConfig
from spamfilter.policy import strip_spam_headers
from spamfilter.server import FilterDaemon

LOCALHOST = "127.0.0.1"
WAIT = 20.0  # seconds: the most any test waits for a server to start or stop
ROOT = Path(__file__).resolve().parents[1]
SPAMFILTER = [sys.executable, "-c", "import sys; from spamfilter.cli import main; sys.exit(main())"]


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


@contextmanager
def sink(behaviour: SinkBehaviour | None = None) -> Iterator[tuple[SinkHandler, int]]:
    """A capturing SMTP server (aiosmtpd, 8BITMIME/SMTPUTF8/SIZE); yields (handler, port)."""
    handler = SinkHandler(behaviour or SinkBehaviour())
    runner = LoopThread()

    async def start() -> asyncio.Server:
        def protocol() -> SMTP:
            return SMTP(handler, enable_SMTPUTF8=True, hostname="sink", loop=runner.loop)

        return await runner.loop.create_server(protocol, LOCALHOST, 0)

    server = runner.run(start())
    try:
        yield handler, server.sockets[0].getsockname()[1]
    finally:
        runner.close(server)


def filter_config(model_dir: Path, relay_port: int, **changes) -> FilterConfig:
    """Test settings: ephemeral ports, short timeouts."""
    base = FilterConfig(
        model=str(model_dir),
        listen=f"{LOCALHOST}:0",
        relay=f"{LOCALHOST}:{relay_port}",
        metrics_listen=f"{LOCALHOST}:0",
        hostname="filter.test",
        relay_timeout=5.0,
        score_timeout=5.0,
        session_timeout=15.0,
        drain_timeout=5.0,
    )
    return dataclasses.replace(base, **changes)


@contextmanager
def running_filter(config: FilterConfig, scorer=None) -> Iterator[FilterDaemon]:
    """The filter daemon serving ``config`` from a thread; ``scorer`` replaces the model."""
    daemon = FilterDaemon(config, lambda: config)
    daemon.setup(scorer)
    failure: list[BaseException] = []
    loop_holder: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        async def main() -> None:
            loop_holder.append(asyncio.get_running_loop())
            await daemon.serve(handle_signals=False)

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by the test, not lost in the thread
            failure.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not daemon.started.is_set() and not failure and time.monotonic() < deadline:
        time.sleep(0.01)
    if failure:
        raise failure[0]
    daemon.loop = loop_holder[0]
    try:
        yield daemon
    finally:
        daemon.loop.call_soon_threadsafe(daemon.stop)
        thread.join(WAIT)
        assert not thread.is_alive(), "the filter did not stop"
        assert not failure, failure


def client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(LOCALHOST, port, local_hostname="client.test", timeout=WAIT)


def send(port: int, raw: bytes, recipients: Sequence[str] = ("user@example.net",), **kw) -> dict:
    """Send one message; the refused-recipients dict smtplib returns."""
    with client(port) as smtp:
        return smtp.sendmail("sender@example.org", list(recipients), raw, **kw)


def spam_headers(content: bytes) -> dict[str, str]:
    """The X-Spam-* headers at the top of a delivered message."""
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return dict(re.findall(r"^(X-Spam-[\w-]+): (.*?)\r?$", head, re.MULTILINE))


def our_prefix(content: bytes, original: bytes) -> bytes:
    """What the filter put before ``original``; asserts the rest is byte for byte."""
    assert content.endswith(original), "the message body changed"
    return content[: len(content) - len(original)]


# The daemon as a real process (signals) ---------------------------------------------------
@contextmanager
def daemon_process(args: Sequence[str], env: dict[str, str] | None = None):
    """``spamfilter serve ARGS``; yields (process, smtp port, log lines) once it listens."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [*SPAMFILTER, "serve", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=ROOT,
    )
    log: list[str] = []
    try:
        port = _wait_for_port(process, log)
        yield process, port, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(WAIT)


def _wait_for_port(process: subprocess.Popen, log: list[str]) -> int:
    """Read stderr until the start-up line names the port (and keep collecting it)."""
    found: list[int] = []
    started = threading.Event()

    def read() -> None:
        for line in process.stderr:
            log.append(line)
            match = re.search(r"serving \S+ on 127\.0\.0\.1:(\d+)", line)
            if match:
                found.append(int(match.group(1)))
                started.set()
        process.stderr.close()  # at EOF: the process is gone (an open pipe is a ResourceWarning)
        started.set()

    threading.Thread(target=read, daemon=True).start()
    started.wait(60)  # importing torch and loading the model, on a busy 2-core machine
    if not found:
        raise AssertionError("the daemon did not start:\n" + "".join(log))
    return found[0]


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def serve_args(model_dir: Path, relay_port: int, *extra: str) -> list[str]:
    """``spamfilter serve`` arguments for a daemon_process on loopback, metrics off."""
    return [
        *("--model", str(model_dir), "--listen", f"{LOCALHOST}:0"),
        *("--relay", f"{LOCALHOST}:{relay_port}", "--metrics-listen", ""),
        *extra,
    ]


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


class ConstantScorer:
    """A stand-in model: every message scores ``score`` (these tests are about the daemon)."""

    def __init__(self, score: float = 0.1) -> None:
        self.score = score

    def score_raw(self, messages: Sequence[bytes]) -> list[float]:
        return [self.score] * len(messages)
