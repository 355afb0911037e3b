"""Postfix -> filter -> Postfix end to end, against the same Postfix without the filter.

    sudo .venv/bin/python benchmarks/postfix_pipeline.py --model runs/x --messages 400 \
        --clients 8 --out results/postfix_pipeline.json

Starts a private Postfix (``spamrig.postfix``: its own config, queue and Maildir under
a temporary directory, loopback only; needs root and Debian's postfix) set up as an
after-queue content filter, and ``spamfilter serve`` between its hops. Then, in one run,
the same N messages (half spam, half ham) go in through Postfix's smtpd from ``--clients``
threads (one smtplib connection each, N/clients messages per client):
  1. "direct": ``content_filter`` switched off (``postconf -e``, ``postfix reload``);
  2. "filtered": switched on, mail passes the filter and the re-injection smtpd.
Reported per run: messages/s (N / time from the first MAIL to the last Maildir delivery)
and the per-message delay from the end of its DATA to its file in the Maildir (p50, p99).
A burst of N messages queues up in front of the slower path, so these delays include the
wait in Postfix's queue; the filter's own time per message (its log's ``ms=``: scoring
and relaying to the re-injection smtpd) is reported for the filtered run as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import smtplib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spamfilter.smtp.postfix import Hops, main_cf
from spamrig.daemon import daemon_process
from spamrig.postfix import DOMAIN, LOCALHOST, USER, Postfix, postfix_instance
from spamrig.synthetic import make_message

DELIVERY_TIMEOUT = 600.0  # seconds for one run's messages to reach the Maildir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory to serve")
    parser.add_argument("--messages", type=int, default=400, help="per run (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def messages(count: int, run: str) -> list[bytes]:
    """Half spam, half ham; each with a Message-ID naming the run and its index."""
    result = []
    for index in range(count):
        raw = make_message(index % 2, index).replace(b"\n", b"\r\n")
        old = f"<{index % 2}.{index}@example.org>".encode()
        result.append(raw.replace(old, f"<{run}.{index}@bench.test>".encode()))
    return result


def send_all(postfix: Postfix, batch: list[bytes], clients: int) -> dict[int, float]:
    """Send ``batch`` from ``clients`` connections; index -> time its DATA was answered."""
    sent: dict[int, float] = {}

    def client(indices: range) -> None:
        with smtplib.SMTP(LOCALHOST, postfix.smtp_port, timeout=60) as smtp:
            for index in indices:
                smtp.sendmail("bench@example.org", [f"{USER}@{DOMAIN}"], batch[index])
                sent[index] = time.time()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, [range(c, len(batch), clients) for c in range(clients)]))
    return sent


def delivered_at(postfix: Postfix, run: str) -> dict[int, float]:
    """index -> mtime of its Maildir file, for this run's messages."""
    times = {}
    marker = f"<{run}.".encode()
    for path in (postfix.maildir / "new").iterdir():
        head = path.read_bytes()[:4096]
        start = head.find(marker)
        if start >= 0:
            index = int(head[start + len(marker) : head.index(b"@", start)])
            times[index] = path.stat().st_mtime
    return times


def measure(postfix: Postfix, run: str, count: int, clients: int) -> dict[str, float]:
    batch = messages(count, run)
    started = time.time()
    sent = send_all(postfix, batch, clients)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(done := delivered_at(postfix, run)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{run}: only {len(done)} of {count} delivered")
        time.sleep(0.2)
    p50, p99 = percentiles([(done[index] - sent[index]) * 1000 for index in range(count)])
    elapsed = max(done.values()) - started
    return {
        "messages": count,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(count / elapsed, 1),
        "delay_p50_ms": p50,
        "delay_p99_ms": p99,
    }


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99), rounded to 0.1."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return round(statistics.median(ordered), 1), round(p99, 1)


def filter_times(log: list[str]) -> dict[str, float]:
    """p50/p99 of the filter's own time per message, from its log lines."""
    p50, p99 = percentiles([float(ms) for line in log for ms in re.findall(r" ms=(\d+) ", line)])
    return {"filter_ms_p50": p50, "filter_ms_p99": p99}


def switch_filter(postfix: Postfix, on: bool) -> None:
    hops = Hops(filter=f"{LOCALHOST}:{postfix.filter_port}")
    value = main_cf("after-queue", hops)["content_filter"] if on else ""
    postfix.run("postconf", "-e", f"content_filter={value}")
    postfix.run("postfix", "reload")
    time.sleep(2)  # smtpd processes pick up the new value as they are replaced


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("a private Postfix instance needs root")
    results: dict[str, dict[str, float]] = {}
    with postfix_instance("after-queue") as postfix:
        serve = [
            *("--model", str(args.model), "--metrics-listen", ""),
            *("--listen", f"{LOCALHOST}:{postfix.filter_port}"),
            *("--relay", f"{LOCALHOST}:{postfix.reinject_port}"),
        ]
        with daemon_process(serve) as (_, _, log):
            for run, on in (("direct", False), ("filtered", True)):
                switch_filter(postfix, on)
                results[run] = measure(postfix, run, args.messages, args.clients)
                print(run, results[run], flush=True)
            results["filtered"].update(filter_times(log))
    added = results["filtered"]["delay_p50_ms"] - results["direct"]["delay_p50_ms"]
    report = {
        "model": str(args.model),
        "clients": args.clients,
        "runs": results,
        "filter_adds_p50_ms": round(added, 1),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
