"""What a learned model's site words cost at scoring time, against its encoder alone.

    python benchmarks/site_words_cost.py --model results/learn_crosscorpus/k200-defaults/model \
        --out docs/bench/site_words_cost.json

The model directory ``spamfilter learn`` wrote is scored as served (``onnx-fp32``, runs of
8) and as a copy without its ``site_words.json`` (re-exported once, untimed), on the same
SpamAssassin test messages' model texts, in alternating rounds (the best counts); the
site evidence (word model and gate) is also timed alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import WORDS_FILE
from spamrig.crosscorpus import read_spamassassin

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a directory learn wrote")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/site_words_cost.json")
    return parser.parse_args()


def rate(score, texts: list[str]) -> float:
    score(texts[:16])  # warm-up
    started = time.perf_counter()
    score(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    if not (args.model / WORDS_FILE).is_file():
        sys.exit(f"{args.model}: no {WORDS_FILE}; learn it with --site-words true")
    raws = list(read_spamassassin("test")["test"].values())[: args.messages]
    texts = [email_to_text(raw) for _, raw in raws]
    with tempfile.TemporaryDirectory() as scratch:
        alone = Path(shutil.copytree(args.model, Path(scratch) / "encoder-alone",
                                     ignore=shutil.ignore_patterns(WORDS_FILE)))  # fmt: skip
        served = Classifier(args.model, precision="onnx-fp32")
        encoder = Classifier(alone, precision="onnx-fp32")  # exports anew: another model id
        scorers = {
            "with site words": lambda batch: served.score_texts(batch, batch_size=8),
            "encoder alone": lambda batch: encoder.score_texts(batch, batch_size=8),
            "site evidence alone": served.site_words.evidence,
        }
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, score in scorers.items():
                best[name] = max(best.get(name, 0.0), rate(score, texts))
    result = {
        "msgs_per_s": {name: round(value, 1) for name, value in best.items()},
        "with_vs_alone": round(best["with site words"] / best["encoder alone"], 3),
        "messages": len(texts),
        "model": str(args.model),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
