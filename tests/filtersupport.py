"""Two-server test rig for the filter: a capturing sink (the next hop) and the filter.

Both run on 127.0.0.1 with ephemeral ports, each on an event loop in a thread of its own,
so tests drive them with plain blocking ``smtplib`` from the test thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import smtplib
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
        server.close()
        runner.stop()


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
