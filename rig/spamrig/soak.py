"""The soak loop: many numbered messages through a real ``spamfilter serve`` process.

Shared by ``benchmarks/soak.py`` (20,000 messages, figures to JSON) and
``tests/test_hostile_clients.py`` (a small bounded run).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import psutil

from spamrig.clients import delivered_ids, lost, numbered_message, our_prefix, relayed_as, send_load
from spamrig.daemon import daemon_process, serve_args, wait_for
from spamrig.sink import sink


def soak(model: Path, messages: int, clients: int, rounds: int) -> dict:
    """Run the soak; the figures (raises AssertionError if anything was lost or altered)."""
    sent = {
        index: numbered_message(index, size=400 + 37 * (index % 50)) for index in range(messages)
    }
    with sink() as (captured, sink_port):
        args = serve_args(model, sink_port, "--max-connections", str(clients + 16))
        with daemon_process(args) as (process, port, _log):
            daemon = psutil.Process(process.pid)
            asyncio.run(send_load(port, [numbered_message(-1)], 1))  # warm-up
            fds_before = daemon.num_fds()
            rss = [daemon.memory_info().rss]
            outcomes = []
            started = time.perf_counter()
            per_round = -(-messages // rounds)
            for first in range(0, messages, per_round):
                batch = list(range(first, min(first + per_round, messages)))
                results = asyncio.run(send_load(port, [sent[i] for i in batch], clients))
                for outcome in results:
                    outcome.index = batch[outcome.index]
                outcomes += results
                rss.append(daemon.memory_info().rss)
            seconds = time.perf_counter() - started
            wait_for(lambda: daemon.num_fds() <= fds_before, timeout=30)
            fds_after = daemon.num_fds()
    deliveries = [d for d in captured.deliveries if b"<-1@load>" not in d.content]
    assert lost(outcomes, deliveries) == []
    assert [o.code for o in outcomes] == [250] * messages, "every message answered 250"
    held = delivered_ids(deliveries)
    assert sorted(held) == list(range(messages)), "every message delivered exactly once"
    for index, delivery in zip(held, deliveries, strict=True):
        expected = relayed_as(sent[index])
        body = delivery.content[len(our_prefix(delivery.content, expected)) :]
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    latencies = sorted(o.seconds for o in outcomes)
    return {
        "messages": messages,
        "clients": clients,
        "seconds": round(seconds, 1),
        "msgs_per_s": round(messages / seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "answered_250": sum(o.code == 250 for o in outcomes),
        "delivered_exactly_once_byte_exact": len(held),
        "lost": 0,
        "rss_mb_per_round": [round(value / 2**20, 1) for value in rss],
        "open_fds_before": fds_before,
        "open_fds_after": fds_after,
        "model": str(model),
        "cpu_count": psutil.cpu_count(),
    }
