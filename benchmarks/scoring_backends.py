"""Scoring throughput by backend, and each backend's accuracy against PyTorch fp32.

    python benchmarks/scoring_backends.py --model runs/default --messages 256 \
        --out docs/bench/scoring_backends.json

One run, one machine: the same ``--messages`` messages of the test split (a seeded
sample) are scored by every precision (PyTorch fp32, bf16 autocast, int8 dynamic
quantization; ONNX Runtime fp32, int8) at each batch size, after one warm-up batch, in
``--rounds`` alternating rounds; the best round counts (the machine is shared, and
the others' load only ever slows a round down). Precisions in ``--slow`` (bf16: it is
emulated, ~15x slower, on CPUs without avx512_bf16/AMX) are timed on the first
``--slow-messages`` of the sample only.
Throughput counts tokenization and the forward pass (``Classifier.score_texts``, with
its length-sorted batching); ``email_to_text`` is the same for every backend and is
timed once on its own.

``--background-load N`` keeps N other processes spinning on the CPU while the backends
are timed: a filter shares its host with the MTA and everything else, and the backends
do not slow down alike when a core is taken.

Parity: each backend's scores against fp32's on the same messages, each at the tag
threshold the filter would apply to it (fp32's, or the one tuned for that precision with
``spamfilter threshold tune --precision P``): the change in false-positive rate and
recall, the verdicts that flip, the largest score change. It holds when
|dFPR| <= 0.001 and |drecall| <= 0.005. The whole test split is used where the backend
would score it within ``--parity-budget`` seconds, else the benchmark sample (the JSON
says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spamfilter.evaluation.metrics import at_threshold
from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import read_card
from spamfilter.model.precision import BACKENDS
from spamrig import ROOT
from spamtrain.data import load_splits

MAX_DFPR = 0.001
MAX_DRECALL = 0.005


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs/default")
    parser.add_argument("--data", default="spamassassin", help="labelled source (default built-in)")
    parser.add_argument("--messages", type=int, default=256, help="messages timed (default 256)")
    parser.add_argument("--batch-sizes", default="32,8", help="(default 32,8)")
    parser.add_argument("--precisions", default=",".join(BACKENDS), help="(default: all)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--slow", default="bf16", help="precisions timed on fewer messages")
    parser.add_argument("--slow-messages", type=int, default=32, help="(default 32)")
    parser.add_argument(
        "--parity-budget", type=float, default=120.0, help="seconds for whole-split parity"
    )
    parser.add_argument(
        "--background-load", type=int, default=0, help="busy processes while timing (default 0)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/scoring_backends.json")
    return parser.parse_args()


def spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def background_load(processes: int):
    """``processes`` busy loops for the duration of the block."""
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def timed(classifier: Classifier, texts: list[str], batch_size: int) -> tuple[float, list[float]]:
    """msgs/s of scoring ``texts`` (after a warm-up batch), and the scores."""
    classifier.score_texts(texts[:batch_size], batch_size)
    started = time.perf_counter()
    scores = classifier.score_texts(texts, batch_size)
    return len(texts) / (time.perf_counter() - started), scores


def parity(
    labels: np.ndarray, reference: np.ndarray, scores: np.ndarray, fp32_tag: float, tag: float
) -> dict:
    """``scores`` at ``tag`` against the fp32 ``reference`` at ``fp32_tag``."""
    ours = at_threshold(labels, scores, tag)
    theirs = at_threshold(labels, reference, fp32_tag)
    d_fpr, d_recall = ours["fpr"] - theirs["fpr"], ours["recall"] - theirs["recall"]
    return {
        "n": len(labels),
        "threshold": tag,
        "fpr": ours["fpr"],
        "recall": ours["recall"],
        "d_fpr": d_fpr,
        "d_recall": d_recall,
        "verdicts_flipped": int(np.sum((scores >= tag) != (reference >= fp32_tag))),
        "max_abs_d_score": float(np.max(np.abs(scores - reference))),
        "holds": abs(d_fpr) <= MAX_DFPR and abs(d_recall) <= MAX_DRECALL,
    }


def main() -> None:
    args = parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    # fp32 first: it is the reference for parity and speed-up.
    precisions = ["fp32", *(p for p in args.precisions.split(",") if p != "fp32")]
    card = read_card(args.model)
    tag = card.thresholds.tag
    split = load_splits(args.data, ("test",))["test"]
    split_texts = [email_to_text(raw) for raw in split["raw"]]
    split_labels = np.asarray(split["label"])
    sample = np.random.default_rng(0).permutation(len(split))[: args.messages]
    texts = [split_texts[i] for i in sample]
    started = time.perf_counter()
    for raw in split.select(sample.tolist())["raw"]:
        email_to_text(raw)
    text_rate = len(sample) / (time.perf_counter() - started)

    classifiers, rows = {}, []
    for precision in precisions:
        loading = time.perf_counter()
        classifiers[precision] = Classifier(args.model, precision=precision)
        timed_on = args.slow_messages if precision in args.slow.split(",") else len(texts)
        rows.append(
            {
                "precision": precision,
                "load_s": round(time.perf_counter() - loading, 2),
                "messages_timed": min(timed_on, len(texts)),
            }
        )
    sample_scores, split_scores = {}, {}
    with background_load(args.background_load):
        for round_ in range(args.rounds):
            for row in rows:
                for size in batch_sizes:
                    chosen = texts[: row["messages_timed"]]
                    rate, scores = timed(classifiers[row["precision"]], chosen, size)
                    key = f"msgs_per_s_batch_{size}"
                    row[key] = max(row.get(key, 0.0), round(rate, 2))
                    sample_scores.setdefault(row["precision"], np.asarray(scores))
                print(f"round {round_ + 1}: {json.dumps(row)}", flush=True)
        load_average = os.getloadavg()
    for row in rows:
        if len(split) / row[f"msgs_per_s_batch_{batch_sizes[0]}"] <= args.parity_budget:
            classifier = classifiers[row["precision"]]
            split_scores[row["precision"]] = np.asarray(classifier.score_texts(split_texts))

    for row in rows:
        precision = row["precision"]
        own_tag = card.thresholds_for(precision).tag
        if precision in split_scores and "fp32" in split_scores:
            scores, reference = split_scores[precision], split_scores["fp32"]
            row["parity"] = parity(split_labels, reference, scores, tag, own_tag)
            row["parity"]["on"] = f"test split ({len(split)} messages)"
        else:
            n = row["messages_timed"]
            labels, reference = split_labels[sample[:n]], sample_scores["fp32"][:n]
            row["parity"] = parity(labels, reference, sample_scores[precision], tag, own_tag)
            row["parity"]["on"] = f"benchmark sample ({n} messages)"
        row["parity"]["threshold_tuned_for_precision"] = precision in card.precision_thresholds
    fp32 = rows[0][f"msgs_per_s_batch_{batch_sizes[0]}"]
    for row in rows:
        row["speedup_vs_fp32"] = round(row[f"msgs_per_s_batch_{batch_sizes[0]}"] / fp32, 2)
    result = {
        "benchmark": "scoring_backends",
        "model": str(args.model),
        "model_max_length": card.max_length,
        "tag_threshold": tag,
        "messages": len(sample),
        "rounds": args.rounds,
        "source": f"{args.data} test split, seeded sample (seed 0)",
        "email_to_text_msgs_per_s": round(text_rate, 1),
        "tolerance": {"abs_d_fpr": MAX_DFPR, "abs_d_recall": MAX_DRECALL},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            # Other load means slower, noisier figures (the spinners' included).
            "load_average_1_5_15min_after_timing": [round(load, 2) for load in load_average],
            "background_load_processes": args.background_load,
        },
        "backends": rows,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
