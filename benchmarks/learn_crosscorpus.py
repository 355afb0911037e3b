"""``spamfilter learn`` on another site's mail: crosscorpus-dev's TREC 2007 part.

    python benchmarks/learn_crosscorpus.py ../shared/data/crosscorpus-dev.jsonl.gz \
        --model runs/default --k 200 [--k 50 --k 1000] [--learn-arg=--epochs=5 ...] \
        --out docs/bench/learn_crosscorpus.json --table docs/bench/learn_crosscorpus.md

k TREC messages (k/2 ham, k/2 spam, a seeded draw; each smaller k a prefix of the larger)
play the site's own mail: they are written as message files and given to ``spamfilter
learn`` (a real process, timed). The parent model and each learned one then score the
remaining TREC messages, the phishing_pot messages (spam only: the remaining TREC ham are
their negatives) and the SpamAssassin test split (the forgetting check), all with
``onnx-fp32``. Figures: ROC-AUC, spam recall at FPR <= 0.1 % and 1 %, and recall and FPR
at the model's shipped tag threshold, before and after; the wall time of each learn run.

Runs accumulate in ``--out`` (a rerun of the same k and learn arguments replaces its
row) and ``--table`` is rewritten from all of them. Scores are cached under ``--work``,
so the parent scores its 5,236 messages once. The data set lives outside the project:
no test depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spamfilter.model.modeldir import model_id, read_card
from spamrig.crosscorpus import (
    add_result_arguments,
    cached_scores,
    headline,
    read_crosscorpus,
    read_spamassassin,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="crosscorpus-dev.jsonl.gz")
    parser.add_argument("--model", type=Path, default=ROOT / "runs/default", help="parent model")
    parser.add_argument("--k", type=int, action="append", help="site messages (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of site mail")
    parser.add_argument(
        "--learn-arg",
        action="append",
        default=[],
        help="passed to spamfilter learn, e.g. --learn-arg=--epochs=5 (repeatable)",
    )
    add_result_arguments(parser, ROOT, "learn_crosscorpus")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    trec, phishing = read_crosscorpus(args.data)
    spamassassin = read_spamassassin("test")["test"]
    messages = {**trec, **phishing, **spamassassin}
    order = draw_order(trec, args.seed)
    before = cached_scores(args.model, messages, args.work / "scores-parent.json")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    for k in args.k or [200]:
        site = [key for label in (0, 1) for key in order[label][: k // 2]]
        variant = "-".join(arg.lstrip("-").replace("=", "") for arg in args.learn_arg) or "defaults"
        run_dir = args.work / f"k{k}-{variant}"
        site_dir = write_site(run_dir / "site", site, messages)
        seconds = learn(args.model, site_dir, run_dir / "model", args.learn_arg)
        after = cached_scores(run_dir / "model", messages, run_dir / "scores.json")
        card = read_card(run_dir / "model")
        rest = [key for key in trec if key not in set(site)]
        row = {
            "k": k,
            "learn_args": args.learn_arg,
            "learn_seconds": seconds,
            "site": {"ham": k // 2, "spam": k // 2, "seed": args.seed},
            "model": model_id(run_dir / "model"),
            "threshold": {
                "before": read_card(args.model).thresholds.tag,
                "after": card.thresholds.tag,
            },
            "calibration": card.calibration,
            "sets": {
                "trec_rest": figures(rest, messages, before, after, args.model, card),
                "phishing": figures(
                    [*ham_of(rest, messages), *phishing], messages, before, after, args.model, card
                ),
                "spamassassin_test": figures(
                    list(spamassassin), messages, before, after, args.model, card
                ),
            },
        }
        results["runs"] = [
            r for r in results["runs"] if (r["k"], r["learn_args"]) != (k, args.learn_arg)
        ] + [row]
        print(json.dumps(row["sets"]["trec_rest"], indent=1))
    results |= {
        "parent": model_id(args.model),
        "data": str(args.data),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.table.write_text(markdown(results))
    print(args.table.read_text())


# --- the mail ---------------------------------------------------------------------------


def draw_order(trec: dict, seed: int) -> dict[int, list[str]]:
    """Each label's ids in a seeded random order: the site mail of size k takes k/2 of each."""
    rng = random.Random(seed)
    order = {label: sorted(key for key, (y, _) in trec.items() if y == label) for label in (0, 1)}
    for keys in order.values():
        rng.shuffle(keys)
    return order


def ham_of(keys: list[str], messages: dict) -> list[str]:
    return [key for key in keys if messages[key][0] == 0]


def write_site(folder: Path, keys: list[str], messages: dict) -> Path:
    for key in keys:
        label, raw = messages[key]
        target = folder / ("spam" if label else "ham") / f"{key.replace(':', '_')}.eml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    return folder


# --- learning and scoring ------------------------------------------------------------------


def learn(parent: Path, site: Path, output: Path, extra: list[str]) -> float:
    """Wall seconds of ``spamfilter learn`` (its output beside the model, as learn.log)."""
    record = output.with_name("learn.json")
    if output.is_dir() and record.is_file():  # learned by an earlier run of the benchmark
        return json.loads(record.read_text())["seconds"]
    command = [
        sys.executable, "-m", "spamfilter.cli", "learn", "--model", str(parent),
        "--spam", str(site / "spam"), "--ham", str(site / "ham"), "--output", str(output),
        *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    seconds = round(time.perf_counter() - started, 1)
    print(done.stdout, end="")
    output.with_name("learn.log").write_text(done.stdout)
    record.write_text(json.dumps({"seconds": seconds, "command": command}) + "\n")
    return seconds


def figures(keys: list[str], messages: dict, before: dict, after: dict, parent: Path, card) -> dict:
    labels = np.array([messages[key][0] for key in keys])
    result = {"n_ham": int((labels == 0).sum()), "n_spam": int((labels == 1).sum())}
    for name, scores, tag in (
        ("before", before, read_card(parent).thresholds.tag),
        ("after", after, card.thresholds.tag),
    ):
        values = np.array([scores[key] for key in keys])
        result[name] = {**headline(labels, values, tag), "threshold": tag}
    return result


# --- the table ------------------------------------------------------------------------------

SET_NAMES = {
    "trec_rest": "TREC 2007, the rest",
    "phishing": "phishing_pot (negatives: the rest's TREC ham)",
    "spamassassin_test": "SpamAssassin test split",
}


def markdown(results: dict) -> str:
    lines = [
        "| k | learn settings | learn wall time | evaluated on | ham / spam | ROC-AUC | "
        "recall @ FPR ≤ 0.1 % | recall @ FPR ≤ 1 % | tag threshold | recall at tag | "
        "FPR at tag |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(results["runs"], key=lambda r: (r["k"], r["learn_args"])):
        settings = " ".join(run["learn_args"]) or "defaults"
        seconds = run["learn_seconds"]
        wall = f"{seconds // 60:.0f} min {seconds % 60:.0f} s" if seconds else "n/a"
        for name, title in SET_NAMES.items():
            figures = run["sets"][name]
            b, a = figures["before"], figures["after"]

            def pair(key: str, digits: int = 3, a=a, b=b) -> str:
                return f"{b[key]:.{digits}f} → {a[key]:.{digits}f}"

            lines.append(
                f"| {run['k']} | {settings} | {wall} | {title} | {figures['n_ham']:,} / "
                f"{figures['n_spam']:,} | {pair('roc_auc', 4)} | {pair('recall_at_fpr_0.001')} | "
                f"{pair('recall_at_fpr_0.01')} | {pair('threshold', 4)} | {pair('recall')} | "
                f"{b['fpr']:.2%} → {a['fpr']:.2%} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
