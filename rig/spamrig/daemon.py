"""The filter under test: in this process (``running_filter``) or as a real one (signals).

Both listen on 127.0.0.1 with ephemeral ports and relay to the port they are given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from spamfilter.config import FilterConfig
from spamfilter.smtp.server import FilterDaemon
from spamrig import LOCALHOST, ROOT, WAIT

SPAMFILTER = [sys.executable, "-c", "import sys; from spamfilter.cli import main; sys.exit(main())"]


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
def running_filter(config: FilterConfig, scorer=None, explainer=None) -> Iterator[FilterDaemon]:
    """The filter daemon serving ``config`` from a thread; ``scorer`` replaces the model
    (and ``explainer`` then its explanations: none by default)."""
    daemon = FilterDaemon(config, lambda: config)
    daemon.setup(scorer, explainer)
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
            match = re.search(r"serving \S+ on 127(?:\.\d+){3}:(\d+)", line)
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


class ConstantScorer:
    """A stand-in model: every message scores ``score`` (these tests are about the daemon)."""

    def __init__(self, score: float = 0.1) -> None:
        self.score = score

    def score_raw(self, messages: Sequence[bytes]) -> list[float]:
        return [self.score] * len(messages)
