"""Mail the model never trained on, for the benchmarks that judge it there.

``crosscorpus-dev.jsonl.gz`` (kept beside the project, in ``../shared/data``; its README
says what it holds) and the SpamAssassin test split, as ``id -> (label, raw bytes)``
mappings, and one scoring pass per model cached on disk so each benchmark scores a
model's messages once. No test reads crosscorpus-dev: benchmarks take its path on their
command line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

Messages = dict[str, tuple[int, bytes]]

TREC, PHISHING = "trec07p", "phishing_pot"


def read_crosscorpus(path: Path) -> tuple[Messages, Messages]:
    """The TREC 2007 messages and the phishing_pot messages."""
    trec, phishing = {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            row = json.loads(line)
            raw = row["raw"].encode(row["raw_encoding"], "surrogateescape")
            label = 1 if row["label"] == "spam" else 0
            (trec if row["source"] == TREC else phishing)[row["id"]] = (label, raw)
    return trec, phishing


def read_spamassassin(*splits: str) -> dict[str, Messages]:
    """Splits of the built-in corpus; ids are ``spamassassin:<md5>`` in the test split and
    ``spamassassin-<split>:<md5>`` in the others."""
    from spamtrain.data import load_splits

    loaded = load_splits("spamassassin", splits)
    result = {}
    for split, rows in loaded.items():
        prefix = "spamassassin" if split == "test" else f"spamassassin-{split}"
        result[split] = {
            f"{prefix}:{md5}": (label, raw)
            for md5, label, raw in zip(rows["id"], rows["label"], rows["raw"], strict=True)
        }
    return result


def cached_scores(
    model: Path, messages: Messages, cache: Path, precision: str = "onnx-fp32"
) -> dict[str, float]:
    """P(spam) of every message by ``model``, computed once per cache file."""
    if cache.is_file():
        return json.loads(cache.read_text())
    import datasets

    from spamfilter.cli.common import score_dataset
    from spamfilter.model.classifier import Classifier

    keys = list(messages)
    rows = datasets.Dataset.from_dict({"raw": [messages[key][1] for key in keys]})
    started = time.perf_counter()
    scores = score_dataset(Classifier(model, precision=precision), rows)
    seconds = time.perf_counter() - started
    print(f"{model}: {len(keys)} messages scored in {seconds:.0f} s ({len(keys) / seconds:.1f}/s)")
    result = dict(zip(keys, scores.tolist(), strict=True))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


HEADLINE = ("roc_auc", "recall_at_fpr_0.001", "recall_at_fpr_0.01", "recall", "fpr", "fp")


def headline(labels: np.ndarray, scores: np.ndarray, tag: float) -> dict[str, float]:
    """The figures these benchmarks report: ROC-AUC, recall at FPR <= 0.1 % and 1 %, and
    recall, FPR and false positives at the tag threshold."""
    from spamfilter.evaluation.metrics import summary

    measured = summary(labels, scores, tag)
    return {name: measured[name] for name in HEADLINE}


def add_result_arguments(parser: argparse.ArgumentParser, root: Path, name: str) -> None:
    """``--work`` (models and cached scores), ``--out`` (JSON) and ``--table`` (markdown)."""
    parser.add_argument("--work", type=Path, default=root / "results" / name)
    parser.add_argument("--out", type=Path, default=root / f"docs/bench/{name}.json")
    parser.add_argument("--table", type=Path, default=root / f"docs/bench/{name}.md")
