"""Soak: many messages through ``spamfilter serve`` on loopback; nothing lost, nothing leaks.

    python benchmarks/soak.py --messages 20000 --clients 64 --out results/soak.json

Starts a capturing sink (aiosmtpd, in this process) and the daemon (its own process, as
deployed), then sends ``--messages`` numbered messages over ``--clients`` concurrent
connections, in ``--rounds`` rounds (every client reconnects each round). Checks that
every message was answered 250 and arrived exactly once, byte for byte (SHA-256 of what
the sink holds after our X-Spam-* headers against what was sent), and reports msgs/s,
the daemon's RSS after each round and its open file descriptors before and after.
The model is the test suite's tiny BERT (or ``--model``): the daemon is under test, not
the model. The loop is ``spamrig.soak``; tests/test_hostile_clients.py runs a small one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from spamrig.soak import soak
from spamrig.synthetic import make_trained_model_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="(default 20000)")
    parser.add_argument("--clients", type=int, default=64, help="connections (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="RSS samples (default 10)")
    parser.add_argument("--model", type=Path, help="model directory; default: tiny test model")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or make_trained_model_dir(Path(scratch))
        figures = soak(model, args.messages, args.clients, args.rounds)
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
