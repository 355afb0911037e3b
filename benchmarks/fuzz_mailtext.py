"""Coverage-guided fuzzing of email_to_text with atheris (libFuzzer), for a bounded time.

    python benchmarks/fuzz_mailtext.py --seconds 60 --out results/fuzz_mailtext.json

A finding is any input on which ``email_to_text`` raises, returns text outside its
contract (longer than MAX_TEXT_CHARS, lone surrogates, control characters), runs over
``--timeout`` seconds, or makes the process exceed ``--rss-limit-mb``; libFuzzer writes
each to ``--artifacts``. The seed corpus is ``spamrig.hostilemail``'s pathological cases
(those under 64 KiB) and 200 of its random MIME messages. Runs libFuzzer in a child
process and reads its final statistics; prints and writes executions, time, findings.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time (default 60)")
    parser.add_argument("--timeout", type=int, default=2, help="seconds per input (default 2)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="(default 2048)")
    parser.add_argument("--max-len", type=int, default=65536, help="input bytes (default 65536)")
    parser.add_argument("--artifacts", type=Path, default=Path("results/fuzz_artifacts"))
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def fuzz_one(data: bytes) -> None:
    """One libFuzzer execution: raises (a finding) if the output contract is broken."""
    from spamfilter.model import mailtext

    text = mailtext.email_to_text(data)
    if len(text) > mailtext.MAX_TEXT_CHARS or mailtext._CONTROL.search(text):
        raise AssertionError(f"output outside the contract: {text[:80]!r}")
    text.encode("utf-8")


def child() -> None:
    import atheris

    with atheris.instrument_imports(include=["spamfilter", "email", "html"]):
        from spamfilter.model import mailtext  # noqa: F401  (instrumented for coverage)
    args = [arg for arg in sys.argv if arg != "--child"]
    atheris.Setup(args, fuzz_one)
    atheris.Fuzz()


def write_seeds(directory: Path) -> int:
    from hypothesis import HealthCheck, given, settings

    from spamrig.hostilemail import PATHOLOGICAL, hostile_messages

    seeds = [build() for build in PATHOLOGICAL.values()]
    seeds = [seed for seed in seeds if len(seed) <= 65536]

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hostile_messages())
    def collect(raw: bytes) -> None:
        seeds.append(raw)

    collect()
    for index, seed in enumerate(seeds):
        (directory / f"seed-{index:04d}").write_bytes(seed)
    return len(seeds)


def main() -> None:
    if "--child" in sys.argv:  # the libFuzzer process: its arguments are libFuzzer's
        child()
        return
    args = parse_args()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as corpus:
        seeds = write_seeds(Path(corpus))
        command = [
            *(sys.executable, __file__, "--child", corpus),
            f"-max_total_time={args.seconds}",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-max_len={args.max_len}",
            f"-artifact_prefix={args.artifacts}/",
            "-print_final_stats=1",
        ]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    executions = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    stats = dict(re.findall(r"stat::(\w+):\s*(\d+)", log))
    findings = sorted(str(path) for path in args.artifacts.glob("*-*"))
    figures = {
        "engine": "atheris (libFuzzer)",
        "seconds": round(seconds, 1),
        "seed_inputs": seeds,
        "executions": int(executions.group(1)) if executions else None,
        "executions_per_second": round(int(executions.group(1)) / seconds) if executions else None,
        "new_coverage_units": int(stats.get("new_units_added", 0)),
        "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
        "exit_code": done.returncode,
        "findings": findings,
        "python": sys.version.split()[0],
    }
    print(log[-3000:])
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
