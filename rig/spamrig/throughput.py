"""Messages per second through a filter on loopback, for the benchmarks.

``served`` starts a sink and a ``spamfilter serve`` process in front of it, as deployed,
and keeps them up for as many runs as a benchmark wants (``daemon_runs``: one run per
client count). ``smtp_run`` sends the same messages over ``clients`` concurrent smtplib
connections (one thread each, the messages dealt out round-robin) and times each
message from MAIL to the 250 after DATA, as an MTA waiting on the filter would see it.
"""

from __future__ import annotations

import re
import smtplib
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spamrig import LOCALHOST
from spamrig.clients import spam_headers
from spamrig.daemon import daemon_process, serve_args
from spamrig.sink import SinkHandler, sink

WARM_UP = 16  # messages sent once before timing: the model's first batches are slower


@dataclass
class ServedDaemon:
    """A warmed-up ``spamfilter serve`` on ``port``, relaying to the sink of ``sink``."""

    sink: SinkHandler
    port: int

    def run(self, messages: Sequence[bytes], clients: int) -> dict:
        """``smtp_run``, with how many of the messages arrived tagged and with an
        X-Spam-Report."""
        before = len(self.sink.deliveries)
        run = smtp_run(self.port, messages, clients)
        headers = [spam_headers(d.content) for d in self.sink.deliveries[before:]]
        run["tagged"] = sum(h.get("X-Spam-Flag") == "YES" for h in headers)
        run["reported"] = sum("X-Spam-Report" in h for h in headers)
        return run

    @property
    def delivered(self) -> int:
        """Messages that reached the sink in all, warm-up included."""
        return len(self.sink.deliveries)


@contextmanager
def served(model: Path, flags: Sequence[str], messages: Sequence[bytes]) -> Iterator[ServedDaemon]:
    """``spamfilter serve --model MODEL FLAGS`` in front of a sink, warmed up with the
    first of ``messages``."""
    with (
        sink() as (handler, sink_port),
        daemon_process(serve_args(model, sink_port, *flags)) as (_, port, _),
    ):
        smtp_run(port, messages[:WARM_UP], 1)
        yield ServedDaemon(handler, port)


def daemon_runs(
    model: Path, flags: Sequence[str], messages: Sequence[bytes], concurrency: Sequence[int]
) -> tuple[list[dict], int]:
    """``ServedDaemon.run`` at each client count, and how many messages reached the sink."""
    with served(model, flags, messages) as daemon:
        runs = [daemon.run(messages, clients) for clients in concurrency]
        return runs, daemon.delivered


def crlf(raw: bytes) -> bytes:
    """``raw`` with CRLF line ends, as SMTP carries it (smtplib sends bytes as they are)."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def smtp_run(port: int, messages: Sequence[bytes], clients: int) -> dict[str, float]:
    """msgs/s and p50/p99 latency (ms) of sending ``messages`` to ``port``."""
    shares = [messages[index::clients] for index in range(clients)]

    def client(share: Sequence[bytes]) -> list[float]:
        latencies = []
        with smtplib.SMTP(LOCALHOST, port, timeout=300) as smtp:
            for raw in share:
                started = time.perf_counter()
                smtp.sendmail("sender@example.org", ["user@example.net"], raw)
                latencies.append(time.perf_counter() - started)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for share in pool.map(client, shares) for t in share)
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "messages": len(latencies),
        "msgs_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }
