"""``spamfilter threshold show | set | tune``: read and change the model's thresholds."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import yaml

from spamfilter.cli.common import (
    RELOAD_HINT,
    CLIError,
    HelpFormatter,
    add_data_arguments,
    add_model_arguments,
    add_precision_argument,
    confidence_level,
    load_data,
    now,
    probability,
    score_dataset,
)
from spamfilter.evaluation.operating_point import (
    DEFAULT_CONFIDENCE,
    OperatingPoint,
    operating_point,
)
from spamfilter.model.calibration import (
    DEFAULT_TARGET_FPR,
    THRESHOLD_NAMES,
    record_set_by_hand,
    record_tuned,
    statements,
    thresholds_to_change,
)
from spamfilter.model.modeldir import CARD_FILE, Thresholds, read_card, write_card
from spamfilter.model.precision import SHARES_FP32_THRESHOLDS, resolve

if TYPE_CHECKING:
    from datasets import Dataset

    from spamfilter.model.classifier import Classifier


def add_threshold_parser(commands) -> None:
    threshold = commands.add_parser("threshold", help="show, set or tune the model's thresholds")
    actions = threshold.add_subparsers(title="actions", required=True, metavar="ACTION")

    show = actions.add_parser(
        "show",
        help="thresholds, how they were chosen, recorded metrics",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(show, scoring=False)
    show.set_defaults(command=show_thresholds)

    set_ = actions.add_parser(
        "set", help=f"set a threshold by hand (writes {CARD_FILE})", formatter_class=HelpFormatter
    )
    set_.add_argument("value", type=probability, help="the new threshold on P(spam), 0 < t < 1")
    add_model_arguments(set_, scoring=False)
    set_.add_argument("--which", choices=THRESHOLD_NAMES, default="tag", help="which threshold")
    add_precision_argument(set_)
    set_.set_defaults(command=set_threshold)

    tune = actions.add_parser(
        "tune",
        help="choose a threshold for a target false-positive rate on labelled mail",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(tune, scoring=True)
    add_data_arguments(tune, split="validation")
    tune.add_argument(
        "--target-fpr",
        type=probability,
        default=DEFAULT_TARGET_FPR,
        help="false-positive rate the threshold must keep within (its bound at --confidence)",
    )
    tune.add_argument(
        "--confidence",
        type=confidence_level,
        default=DEFAULT_CONFIDENCE,
        help="choose the lowest threshold whose FPR upper bound (Clopper-Pearson, one-sided) "
        "at this confidence is within the target; 0: the FPR observed on the ham alone",
    )
    tune.add_argument("--which", choices=THRESHOLD_NAMES, default="tag", help="which threshold")
    tune.add_argument("--dry-run", action="store_true", help=f"print only; leave {CARD_FILE} as is")
    tune.set_defaults(command=tune_threshold)


def show_thresholds(args: argparse.Namespace) -> int:
    card = read_card(args.model)
    shown: dict = {"model": str(args.model), "thresholds": named(card.thresholds)}
    if card.precision_thresholds:
        shown["precision_thresholds"] = {
            precision: named(thresholds)
            for precision, thresholds in card.precision_thresholds.items()
        }
    if said := statements(card):
        shown["operating_points"] = said
    shown |= {
        "calibration": card.calibration or "not recorded",
        "metrics": card.metrics or "not recorded",
    }
    print(yaml.safe_dump(shown, sort_keys=False, width=1000).rstrip())  # one line a statement
    return 0


def named(thresholds: Thresholds) -> dict[str, float | None]:
    return {name: getattr(thresholds, name) for name in THRESHOLD_NAMES}


def set_threshold(args: argparse.Namespace) -> int:
    card = read_card(args.model)
    precision = resolve(args.precision)
    thresholds, calibration = thresholds_to_change(card, precision)
    setattr(thresholds, args.which, args.value)
    record_set_by_hand(calibration, args.which, now())
    write_card(args.model, card)
    shared = precision in SHARES_FP32_THRESHOLDS
    scores = " and ".join(sorted(SHARES_FP32_THRESHOLDS)) if shared else precision
    where = args.model / CARD_FILE
    print(f"{args.which} threshold for {scores} scores set to {args.value} in {where}")
    print(RELOAD_HINT)
    return 0


def tune_threshold(args: argparse.Namespace) -> int:
    classifier, _, labels, scores = score_labelled(args)
    try:
        point = operating_point(labels, scores, args.target_fpr, args.confidence)
    except ValueError as error:
        raise CLIError(f"{args.data} ({args.split} split): {error}") from None
    print_tuning(args, labels, scores, point)
    if args.dry_run:
        print(f"dry run: {CARD_FILE} unchanged")
        return 0
    card = read_card(args.model)  # afresh: it may have changed while we were scoring
    thresholds, calibration = thresholds_to_change(card, classifier.precision)
    setattr(thresholds, args.which, point.threshold)
    record_tuned(
        calibration,
        args.which,
        point,
        split=args.split,
        scheme=args.scheme,
        source=args.data,
        precision=classifier.precision,
        chosen_at=now(),
    )
    write_card(args.model, card)
    print(f"written to {args.model / CARD_FILE}; {RELOAD_HINT}")
    return 0


def print_tuning(
    args: argparse.Namespace, labels: np.ndarray, scores: np.ndarray, point: OperatingPoint
) -> None:
    """The sweep table around the chosen threshold, then what it means in messages."""
    from spamfilter.evaluation.metrics import at_threshold, sweep
    from spamfilter.evaluation.report import SWEEP_COLUMNS, markdown_table

    chosen = {**at_threshold(labels, scores, point.threshold), "chosen": "<-"}
    rows = rows_around(sweep(labels, scores, points=50), chosen)
    print(markdown_table(rows, (*SWEEP_COLUMNS, "chosen")))
    print(
        f"\n{point.statement(args.which)}\nrecall {chosen['recall']:.2%} ({chosen['tp']} of "
        f"{point.n_spam} spam)"
    )


def rows_around(rows: list[dict], chosen: dict, each_side: int = 4) -> list[dict]:
    """``chosen`` among the sweep ``rows``, with ``each_side`` neighbours below and above it."""
    below = [row for row in rows if row["threshold"] < chosen["threshold"]][-each_side:]
    above = [row for row in rows if row["threshold"] > chosen["threshold"]][:each_side]
    return [*below, chosen, *above]


def score_labelled(args: argparse.Namespace) -> tuple[Classifier, Dataset, np.ndarray, np.ndarray]:
    """Score the chosen split of ``args.data`` with ``args.model``.

    Returns the classifier, the dataset's rows, their labels and their scores.
    """
    from spamfilter.model.classifier import Classifier

    dataset = load_data(args, (args.split,))[args.split]
    classifier = Classifier(args.model, args.precision, device=args.device)
    scores = score_dataset(classifier, dataset, args.batch_size)
    return classifier, dataset, np.asarray(dataset["label"]), scores
