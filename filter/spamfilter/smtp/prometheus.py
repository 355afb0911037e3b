"""Prometheus metrics of the filter, and the small HTTP endpoint that serves them.

``GET /metrics`` is the Prometheus text format; ``GET /healthz`` answers 200 "ok" while
the filter serves mail and 503 while it drains or cannot score. The endpoint runs on
the daemon's event loop (generating the text takes microseconds) on its own port, so a
scrape never competes with SMTP clients for a connection slot.

Several daemons behind one MTA (docs/postfix.md, "Several filter hosts") are told apart
by ``spamfilter_instance_info{name, model}``, an info metric (value 1) rather than a
label on every series: Prometheus already labels each scraped series with the scrape
target's ``instance``, and a join on it brings the name in where a query wants it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

log = logging.getLogger(__name__)

SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class FilterMetrics:
    """The daemon's metrics, in a registry of their own (tests run several daemons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.messages = Counter(
            "spamfilter_messages", "Messages answered, by verdict", ["verdict"], registry=registry
        )
        self.scores = Histogram(
            "spamfilter_score",
            "P(spam) of scored messages",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "spamfilter_message_seconds",
            "Seconds from end of DATA to the answer (score, relay)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_sizes = Histogram(
            "spamfilter_batch_size",
            "Messages per model call",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "spamfilter_batch_seconds",
            "Seconds per model call",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.relay_errors = Counter(
            "spamfilter_relay_errors",
            "Next-hop failures (answered 451), by step",
            ["step"],
            registry=registry,
        )
        self.score_errors = Counter(
            "spamfilter_score_errors",
            "Messages whose scoring failed",
            ["reason"],
            registry=registry,
        )
        self.refused_connections = Counter(
            "spamfilter_refused_connections",
            "Connections refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.sessions = Gauge("spamfilter_sessions", "Open client sessions", registry=registry)
        self.queue_depth = Gauge(
            "spamfilter_queue_depth", "Messages waiting for the model", registry=registry
        )
        self.reloads = Counter(
            "spamfilter_reloads", "SIGHUP reloads, by result", ["result"], registry=registry
        )
        self.explanations = Counter(
            "spamfilter_explanations",
            "X-Spam-Report explanations, by result (ok, timeout, busy, error)",
            ["result"],
            registry=registry,
        )
        self.instance = Info(
            "spamfilter_instance",
            "This daemon: its instance_name and the model it serves",
            registry=registry,
        )

    def describe(self, name: str, model: str) -> None:
        self.instance.info({"name": name, "model": model})

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_sizes.observe(size)
        self.batch_seconds.observe(seconds)


async def serve_http(
    metrics: FilterMetrics, healthy: Callable[[], bool], host: str, port: int
) -> asyncio.Server:
    """Start the /metrics and /healthz endpoint; the caller closes the returned server."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].split(b"?")[0] if b" " in request else b""
            if path == b"/metrics":
                status, kind, body = (
                    "200 OK",
                    CONTENT_TYPE_LATEST,
                    generate_latest(metrics.registry),
                )
            elif path == b"/healthz":
                ok = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                kind, body = "text/plain", b"ok\n" if ok else b"unavailable\n"
            else:
                status, kind, body = "404 Not Found", "text/plain", b"not found\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a scraper that went away or sent garbage
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
