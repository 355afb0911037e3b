"""Soak: many messages through ``spamfilter serve`` on loopback; nothing lost, nothing leaks.

    python benchmarks/soak.py --messages 20000 --clients 64 --out results/soak.json

Starts a capturing sink (aiosmtpd, in this process) and the daemon (its own process, as
deployed), then sends ``--messages`` numbered messages over ``--clients`` concurrent
connections, in ``--rounds`` rounds (every client reconnects each round). Checks that
every message was answered 250 and arrived exactly once, byte for byte (SHA-256 of what
the sink holds after our X-Spam-* headers against what was sent), and reports msgs/s,
the daemon's RSS after each round and its open file descriptors before and after.
The model is the test suite's tiny BERT (or ``--model``): the daemon is under test, not
the model. Not part of the test suite; tests/test_hostile_clients.py runs a small one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "filter")]

from filtersupport import (  # noqa: E402  (the test rig, shared)
    daemon_process,
    delivered_ids,
    lost,
    numbered_message,
    our_prefix,
    relayed_as,
    send_load,
    serve_args,
    sink,
    wait_for,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="(default 20000)")
    parser.add_argument("--clients", type=int, default=64, help="connections (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="RSS samples (default 10)")
    parser.add_argument("--model", type=Path, help="model directory; default: tiny test model")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def tiny_model(directory: Path) -> Path:
    from support import make_trained_model_dir

    return make_trained_model_dir(directory)


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


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or tiny_model(Path(scratch))
        figures = soak(model, args.messages, args.clients, args.rounds)
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
