"""``spamfilter eval``: a report (metrics.json, plots, report.md), optionally with peers."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from spamfilter.cli.common import (
    CLIError,
    HelpFormatter,
    add_data_arguments,
    add_model_arguments,
    load_data,
    now,
    score_dataset,
)
from spamfilter.evaluation.baselines import NAMES as BASELINE_NAMES
from spamfilter.model.calibration import confidence as calibrated_confidence
from spamfilter.model.calibration import target_fpr as calibrated_fpr


def add_eval_parser(commands) -> None:
    parser = commands.add_parser(
        "eval",
        help="write an evaluation report (metrics.json, plots, report.md)",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, scoring=True)
    add_data_arguments(parser, split="test")
    parser.add_argument("--out", required=True, type=Path, help="report directory (created)")
    parser.add_argument(
        "--baseline",
        action="append",
        choices=BASELINE_NAMES,
        default=[],
        help="also train this filter on the training split and compare it (repeatable; "
        "bogofilter and spamassassin run on the raw message and on the model's text)",
    )
    parser.set_defaults(command=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    from spamfilter.evaluation.report import Scored, write_report
    from spamfilter.model.classifier import Classifier

    if args.baseline and args.split == "all":
        raise CLIError("--baseline needs a split to train on: use --split test or validation")
    splits = ("train", "validation", args.split) if args.baseline else (args.split,)
    loaded = load_data(args, tuple(dict.fromkeys(splits)))
    dataset = loaded[args.split]
    classifier = Classifier(args.model, args.precision, device=args.device)
    started = time.perf_counter()
    scores = score_dataset(classifier, dataset, args.batch_size)
    seconds = time.perf_counter() - started
    thresholds = classifier.thresholds
    labels = np.asarray(dataset["label"])
    model = Scored(classifier.model_id, labels, scores, thresholds.tag, 0.5, seconds)
    target_fpr = calibrated_fpr(classifier.card)
    confidence = calibrated_confidence(classifier.card) or 0.0  # older cards: observed rate
    baselines, skipped = [], {}
    if args.baseline:
        from spamfilter.evaluation.baselines.compare import run_baselines

        # The peers train and score for minutes: say what they are doing.
        logging.basicConfig(level=logging.INFO, format="spamfilter: %(message)s")
        train, validation = loaded["train"], loaded["validation"]
        baselines, skipped = run_baselines(
            args.baseline, train, validation, dataset, target_fpr, confidence
        )
    context = {
        "model": classifier.model_id,
        "model_dir": str(args.model),
        "source": args.data,
        "split": args.split,
        "scheme": args.scheme,
        "precision": classifier.precision,
        "comparison_target_fpr": target_fpr,
        "comparison_confidence": confidence,
        "sample": f"{args.limit} messages per evaluated split, seed 0" if args.limit else None,
        "skipped": skipped,
        "evaluated_at": now(),
    }
    metrics = write_report(args.out, model, dataset, thresholds, context, baselines)
    print_evaluation(args.out, metrics)
    return 0


def print_evaluation(out: Path, metrics: dict) -> None:
    summary = metrics["summary"]
    print(
        f"{out / 'report.md'}: {metrics['n']} messages, ROC-AUC {summary['roc_auc']:.4f}, "
        f"at tag {summary['threshold']:.4g}: FPR {summary['fpr']:.4%}, "
        f"recall {summary['recall']:.2%}"
    )
    for row in metrics["filters"][1:]:
        print(
            f"  {row['filter']}: ROC-AUC {row['roc_auc']:.4f}, at {row['threshold']:.4g}: "
            f"FPR {row['fpr']:.4%}, recall {row['recall']:.2%}, F1 {row['f1']:.4f}"
        )
    for name, why in metrics["skipped"].items():
        print(f"  {name}: not run: {why}")
