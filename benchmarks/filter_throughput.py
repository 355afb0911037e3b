"""Throughput of the filter daemon through SMTP, against the same model's bare scoring.

    python benchmarks/filter_throughput.py --model runs/x --messages 400 \
        --concurrency 1,4,16,64 --out results/filter_throughput.json
    python benchmarks/filter_throughput.py --model runs/x --messages 200 --concurrency 4 \
        --explain off,tagged,all --out results/explain_throughput.json

Starts a capturing sink (aiosmtpd, in this process) and ``spamfilter serve`` (its own
process, as deployed) on loopback, sends the same N messages at each concurrency
(clients = threads with one smtplib connection each, N/c messages per client), and
reports msgs/s and p50/p99 latency per message (MAIL to the 250 after DATA). Then
it scores the same messages with ``Classifier.score_raw`` in batches of the daemon's
batch size: the bare figure the daemon is measured against (issue 3: >= 80%).
Messages are ``--mail-dir``'s files (*.eml, or any files), or synthetic ones.
With several ``--explain`` settings (off, tagged, all: X-Spam-Report for no, tagged or
every message), a daemon is started for each in turn and given the same messages, so
the settings are compared in one run; each run counts its tagged and reported messages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from spamfilter.model.precision import DEFAULT_PRECISION, PRECISIONS
from spamrig.throughput import crlf, daemon_runs

WORDS = (
    "meeting agenda project review release notes build thanks schedule report question "
    "offer free cash winner prize click discount bank transfer urgent bonus account"
).split()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory to serve")
    parser.add_argument("--messages", type=int, default=200, help="messages per run (default 200)")
    parser.add_argument(
        "--concurrency", default="1,4,16,64", help="client counts (default 1,4,16,64)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="daemon batch (default 8)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument("--threads", type=int, default=0, help="scoring threads; 0: default")
    parser.add_argument("--mail-dir", type=Path, help="directory of raw messages to send")
    parser.add_argument(
        "--explain", default="tagged", help="explain settings to compare (default tagged)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def synthetic_messages(count: int) -> list[bytes]:
    rng = random.Random(0)
    messages = []
    for index in range(count):
        body = "\r\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(rng.randint(3, 40)))
        messages.append(
            f"From: sender{index} <s{index}@example.org>\r\nTo: user@example.net\r\n"
            f"Subject: {' '.join(rng.choices(WORDS, k=5))}\r\nMessage-ID: <{index}@bench>\r\n"
            f"\r\n{body}\r\n".encode()
        )
    return messages


def mail_dir_messages(directory: Path, count: int) -> list[bytes]:
    files = sorted(path for path in directory.rglob("*") if path.is_file())[:count]
    return [crlf(path.read_bytes()) for path in files]


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The daemon's scoring flags as this benchmark sets them."""
    return [
        *("--batch-size", str(args.batch_size)),
        *("--precision", args.precision, "--threads", str(args.threads)),
        *("--max-connections", "1000"),
    ]


def bare_run(args: argparse.Namespace, messages: list[bytes]) -> dict[str, float]:
    from spamfilter.model.classifier import Classifier

    classifier = Classifier(args.model, precision=args.precision, threads=args.threads or None)
    classifier.score_raw(messages[: args.batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(messages), args.batch_size):
        classifier.score_raw(messages[start : start + args.batch_size])
    elapsed = time.perf_counter() - started
    return {
        "batch_size": args.batch_size,
        "messages": len(messages),
        "msgs_per_s": len(messages) / elapsed,
    }


def main() -> None:
    args = parse_args()
    messages = (
        mail_dir_messages(args.mail_dir, args.messages)
        if args.mail_dir
        else synthetic_messages(args.messages)
    )
    concurrency = [int(clients) for clients in args.concurrency.split(",")]
    runs, delivered = [], 0
    for explain in args.explain.split(","):
        flags = [*serve_flags(args), "--explain", explain]
        explained, count = daemon_runs(args.model, flags, messages, concurrency)
        runs += [{"explain": explain, **run} for run in explained]
        delivered += count
    bare = bare_run(args, messages)
    for run in runs:
        run["fraction_of_bare"] = run["msgs_per_s"] / bare["msgs_per_s"]
        print(
            f"explain {run['explain']:>6}, {run['clients']:>3} clients: "
            f"{run['msgs_per_s']:7.1f} msgs/s  p50 {run['p50_ms']:7.1f} ms  "
            f"p99 {run['p99_ms']:7.1f} ms  ({100 * run['fraction_of_bare']:.0f}% of bare; "
            f"{run['tagged']} tagged, {run['reported']} with X-Spam-Report)"
        )
    print(f"bare Classifier.score_raw, batch {bare['batch_size']}: {bare['msgs_per_s']:.1f} msgs/s")
    result = {
        "model": str(args.model),
        "precision": args.precision,
        "threads": args.threads,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "smtp": runs,
        "bare": bare,
        "delivered": delivered,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
