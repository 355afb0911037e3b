"""Training recipes compared on mail the model never saw: crosscorpus-dev.

    python benchmarks/recipes_crosscorpus.py ../shared/data/crosscorpus-dev.jsonl.gz \
        --model default=runs/default \
        --recipe "long=--config configs/train/long.yaml" \
        --recipe "smooth=--label_smoothing 0.1" \
        --out docs/bench/recipes_crosscorpus.json --table docs/bench/recipes_crosscorpus.md

Each ``--recipe NAME=ARGS`` trains a model with ``accelerate launch training/train.py
ARGS`` (the CPU accelerate config, one process; timed) into ``--work``/NAME; each
``--model NAME=DIR`` takes a model directory as it is; each ``--ensemble NAME=A,B`` averages
the scores of models already scored into ``--work`` (a recipe or model of this run or an
earlier one) and chooses its tag threshold on their averaged SpamAssassin validation scores
by the rule training uses (``operating_point``, the first member's target and confidence).
Every model then scores the SpamAssassin validation and test splits and all of
crosscorpus-dev with ``onnx-fp32`` (or ``--precision onnx-int8``; cached: a rerun scores
only what is new), and is judged at the tag threshold it ships with: ROC-AUC, spam
recall at FPR <= 0.1 % and 1 %, recall and FPR at the tag threshold, on the SpamAssassin
test split and on crosscorpus-dev beside it (with its TREC 2007 and phishing parts
apart). Rows accumulate in ``--out``; ``--table`` is rewritten from them. The data set
lives outside the project: no test depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spamfilter.evaluation.operating_point import DEFAULT_CONFIDENCE, operating_point
from spamfilter.model.calibration import confidence as recorded_confidence
from spamfilter.model.modeldir import model_id, read_card
from spamrig.crosscorpus import (
    PHISHING,
    TREC,
    add_result_arguments,
    cached_scores,
    headline,
    read_crosscorpus,
    read_spamassassin,
)

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIG = ROOT / "configs/accelerate/cpu.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="crosscorpus-dev.jsonl.gz")
    parser.add_argument(
        "--recipe", action="append", default=[], help="NAME=train.py arguments (repeatable)"
    )
    parser.add_argument(
        "--model", action="append", default=[], help="NAME=model directory (repeatable)"
    )
    parser.add_argument(
        "--ensemble", action="append", default=[], help="NAME=A,B: mean of scored models"
    )
    parser.add_argument(
        "--precision",
        choices=["onnx-fp32", "onnx-int8"],
        default="onnx-fp32",
        help="scoring backend (one per --work: the cached scores do not say which)",
    )
    add_result_arguments(parser, ROOT, "recipes_crosscorpus")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    trec, phishing = read_crosscorpus(args.data)
    spamassassin = read_spamassassin("validation", "test")
    messages = {**spamassassin["validation"], **spamassassin["test"], **trec, **phishing}
    sets = {
        "spamassassin_test": list(spamassassin["test"]),
        "crosscorpus_dev": [*trec, *phishing],
        TREC: list(trec),
        PHISHING: [key for key in trec if trec[key][0] == 0] + list(phishing),
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"recipes": {}}
    models = [(*named(spec), None) for spec in args.model]
    for spec in args.recipe:
        name, arguments = named(spec)
        models.append((name, train(args.work / name, arguments), arguments))
    for name, directory, arguments in models:
        directory = Path(directory)
        scores = cached_scores(
            directory, messages, args.work / name / "scores.json", args.precision
        )
        card = read_card(directory)
        results["recipes"][name] = {
            "model": model_id(directory),
            "model_dir": str(directory),
            "train_args": arguments,
            "train_seconds": card.training.get("train_seconds"),
            "wall_seconds": wall_seconds(args.work / name),
            "tag": card.thresholds.tag,
            "calibration": card.calibration,
            "sets": {
                set_name: figures(keys, messages, scores, card.thresholds.tag)
                for set_name, keys in sets.items()
            },
        }
        print(name, json.dumps(results["recipes"][name]["sets"]["crosscorpus_dev"]))
    for spec in args.ensemble:
        name, members = named(spec)
        members = members.split(",")
        scores = mean_scores([args.work / member / "scores.json" for member in members])
        first = read_card(Path(results["recipes"][members[0]]["model_dir"]))
        validation = list(spamassassin["validation"])
        confidence = recorded_confidence(first)
        tag = operating_point(
            [messages[key][0] for key in validation],
            [scores[key] for key in validation],
            first.calibration["target_fpr"],
            DEFAULT_CONFIDENCE if confidence is None else confidence,
        ).threshold
        results["recipes"][name] = {
            "members": members,
            "train_seconds": sum(results["recipes"][m]["train_seconds"] or 0 for m in members),
            "tag": tag,
            "sets": {
                set_name: figures(keys, messages, scores, tag) for set_name, keys in sets.items()
            },
        }
        print(name, json.dumps(results["recipes"][name]["sets"]["crosscorpus_dev"]))
    results |= {
        "data": str(args.data),
        "precision": args.precision,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.table.write_text(markdown(results))
    print(args.table.read_text())


def named(spec: str) -> tuple[str, str]:
    name, separator, value = spec.partition("=")
    if not separator or not name:
        raise SystemExit(f"expected NAME=VALUE, not {spec!r}")
    return name, value


def train(work: Path, arguments: str) -> Path:
    """The model directory of ``train.py arguments``, trained now unless an earlier run did."""
    directory, record = work / "model", work / "train.json"
    if directory.is_dir() and record.is_file():
        return directory
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIG), str(ROOT / "training/train.py"),
        *shlex.split(arguments), "--output_dir", str(directory),
    ]  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(work / "train.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = round(time.perf_counter() - started, 1)
    record.write_text(json.dumps({"seconds": seconds, "command": command}) + "\n")
    return directory


def mean_scores(caches: list[Path]) -> dict[str, float]:
    """The mean P(spam) of each message over the members' cached scores."""
    members = [json.loads(cache.read_text()) for cache in caches]
    return {key: float(np.mean([scores[key] for scores in members])) for key in members[0]}


def wall_seconds(work: Path) -> float | None:
    """Wall time of the whole training launch (start-up, data, training, export), if run here."""
    record = work / "train.json"
    return json.loads(record.read_text())["seconds"] if record.is_file() else None


def figures(keys: list[str], messages: dict, scores: dict, tag: float) -> dict:
    labels = np.array([messages[key][0] for key in keys])
    return {
        "n_ham": int((labels == 0).sum()),
        "n_spam": int((labels == 1).sum()),
        **headline(labels, np.array([scores[key] for key in keys]), tag),
    }


# --- the table ------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [
        "| recipe | training | split | ROC-AUC | recall @ FPR ≤ 0.1 % | recall @ FPR ≤ 1 % | "
        "tag | recall at tag | FPR at tag | TREC recall / FPR at tag | phishing recall at tag |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["recipes"].items():
        seconds = row["train_seconds"]
        training = f"{seconds / 60:.1f} min" if seconds else "n/a"
        trec, phishing = row["sets"][TREC], row["sets"][PHISHING]
        for split, title in (("spamassassin_test", "SA test"), ("crosscorpus_dev", "dev")):
            f = row["sets"][split]
            extra = (
                f"{trec['recall']:.3f} / {trec['fpr']:.2%} | {phishing['recall']:.3f}"
                if split == "crosscorpus_dev"
                else " | "
            )
            lines.append(
                f"| {name} | {training} | {title} | {f['roc_auc']:.4f} | "
                f"{f['recall_at_fpr_0.001']:.3f} | {f['recall_at_fpr_0.01']:.3f} | "
                f"{row['tag']:.4f} | {f['recall']:.3f} | {f['fpr']:.2%} | {extra} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
