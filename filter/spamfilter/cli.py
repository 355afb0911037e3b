"""The ``spamfilter`` command: one function per subcommand, each a few calls deep.

Torch, the training data layer and the daemon are imported by the commands that need
them, so ``threshold show`` and ``threshold set`` answer at once and the filter image
runs without the ``train`` extra. Errors print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from spamfilter.modeldir import (
    CARD_FILE,
    ModelCard,
    ModelDirError,
    Thresholds,
    read_card,
    write_card,
)
from spamfilter.precision import DEFAULT_PRECISION, FP32_EQUIVALENT, PRECISIONS

if TYPE_CHECKING:
    from datasets import Dataset

    from spamfilter.classifier import Classifier

EXIT_ERROR = 2

# The keys of the card's flat ``calibration`` dict (as training writes it) that say which
# false-positive rate each threshold was tuned for.
FPR_KEYS = {"tag": "target_fpr", "reject": "reject_fpr", "quarantine": "quarantine_fpr"}
THRESHOLD_NAMES = tuple(FPR_KEYS)
# baselines.NAMES, spelled out for the same reason.
BASELINES = ("tfidf", "bogofilter", "spamassassin")
DEFAULT_TARGET_FPR = 0.001  # training's default, for models whose card does not say
DESCRIPTION = """Score mail with a BERT model directory, manage its thresholds, evaluate it.

examples:
  spamfilter classify --model runs/x message.eml [more.eml | -] [--json]
  spamfilter threshold show --model runs/x
  spamfilter threshold set 0.85 --model runs/x [--which tag|reject|quarantine]
  spamfilter threshold tune --model runs/x --data SOURCE --target-fpr 0.001 [--dry-run]
  spamfilter eval --model runs/x --data SOURCE --split test --out reports/x
  spamfilter eval --model runs/x --data spamassassin --baseline tfidf --baseline bogofilter ...
  spamfilter export-onnx --model runs/x
  spamfilter serve --model runs/x ...   (spamfilter serve --help)"""
RELOAD_HINT = "a running 'spamfilter serve' picks this up on SIGHUP: kill -HUP <pid>"


class CLIError(RuntimeError):
    """A usage or data problem to report in one line, without a traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show each flag's default (those that have one) and keep the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool):
            return action.help or ""
        return f"{action.help} (default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except (CLIError, ModelDirError) as error:
        print(f"spamfilter: error: {error}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spamfilter", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    add_classify_parser(commands)
    add_threshold_parser(commands)
    add_eval_parser(commands)
    add_export_onnx_parser(commands)
    # Listed for --help only: main() hands "serve" to serve(), which builds its own parser.
    commands.add_parser("serve", help="run the SMTP content filter (spamfilter serve --help)")
    return parser


# --- argument groups shared by several commands ---------------------------------------


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (thresholds, target FPRs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, scoring: bool) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    if scoring:
        add_precision_argument(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="ONNX Runtime fp32 or int8 (onnx-*: exported into the model directory if "
        "missing), or PyTorch fp32, bf16 autocast or int8 dynamic quantization; the "
        "thresholds used are the ones tuned for it, else fp32's",
    )


def add_data_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument(
        "--data", required=True, help="labelled source, as training's --data takes it"
    )
    parser.add_argument(
        "--split",
        choices=("validation", "test", "all"),
        default=split,
        help="which part of the source to use (all: every message, unsplit)",
    )
    parser.add_argument(
        "--scheme",
        choices=("hash", "temporal"),
        default="hash",
        help="how the source is split: the fixed MD5 split, or earlier vs later collections",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="messages per forward pass")
    parser.add_argument(
        "--limit",
        type=int,
        help="use a seeded random sample of this many messages of each evaluated split",
    )


# --- classify -----------------------------------------------------------------------------


def add_classify_parser(commands) -> None:
    parser = commands.add_parser(
        "classify",
        help="score messages",
        formatter_class=HelpFormatter,
        description="Print 'file<TAB>P(spam)<TAB>spam|ham' per message (spam: at or above tag).",
    )
    add_model_arguments(parser, scoring=True)
    parser.add_argument("messages", nargs="+", help="raw RFC 822 files; '-' reads one from stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(command=classify)


def classify(args: argparse.Namespace) -> int:
    from spamfilter.classifier import Classifier

    classifier = Classifier(args.model, precision=args.precision)
    names, raws = read_messages(args.messages)
    scores = classifier.score_raw(raws) if raws else []
    tag = classifier.thresholds.tag
    for name, score in zip(names, scores, strict=True):
        verdict = "spam" if score >= tag else "ham"
        if args.json:
            print(json.dumps({"file": name, "score": score, "verdict": verdict}))
        else:
            print(f"{name}\t{score:.4f}\t{verdict}")
    return EXIT_ERROR if len(names) < len(args.messages) else 0


def read_messages(paths: list[str]) -> tuple[list[str], list[bytes]]:
    """The readable messages' names and bytes; each unreadable one is reported on stderr."""
    names, raws = [], []
    for path in paths:
        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as error:
            print(f"spamfilter: error: cannot read {path}: {error.strerror}", file=sys.stderr)
            continue
        names.append(path)
        raws.append(raw)
    return names, raws


# --- threshold show | set | tune ---------------------------------------------------------


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
        default=0.001,
        help="highest share of ham allowed at or above the threshold",
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
    shown |= {
        "calibration": card.calibration or "not recorded",
        "metrics": card.metrics or "not recorded",
    }
    print(yaml.safe_dump(shown, sort_keys=False).rstrip())
    return 0


def named(thresholds: Thresholds) -> dict[str, float | None]:
    return {name: getattr(thresholds, name) for name in THRESHOLD_NAMES}


def thresholds_to_change(card: ModelCard, precision: str) -> tuple[Thresholds, dict]:
    """The thresholds a change for scores in ``precision`` goes to, and their calibration.

    fp32 and its equivalents change the card's thresholds; another precision gets its own,
    starting as a copy of fp32's.
    """
    if precision in FP32_EQUIVALENT:
        return card.thresholds, card.calibration
    if precision not in card.precision_thresholds:
        card.precision_thresholds[precision] = dataclasses.replace(card.thresholds)
    by_precision = card.calibration.setdefault("precisions", {})
    return card.precision_thresholds[precision], by_precision.setdefault(precision, {})


def set_threshold(args: argparse.Namespace) -> int:
    card = read_card(args.model)
    thresholds, calibration = thresholds_to_change(card, args.precision)
    setattr(thresholds, args.which, args.value)
    calibration.pop(FPR_KEYS[args.which], None)  # no longer how this threshold was chosen
    calibration[f"{args.which}_set_by_hand_at"] = now()
    write_card(args.model, card)
    shared = args.precision in FP32_EQUIVALENT
    scores = " and ".join(sorted(FP32_EQUIVALENT)) if shared else args.precision
    where = args.model / CARD_FILE
    print(f"{args.which} threshold for {scores} scores set to {args.value} in {where}")
    print(RELOAD_HINT)
    return 0


def tune_threshold(args: argparse.Namespace) -> int:
    from spamfilter import evaluation

    _, _, labels, scores = score_labelled(args)
    try:
        value = evaluation.threshold_for_fpr(labels, scores, args.target_fpr)
    except ValueError as error:
        raise CLIError(f"{args.data} ({args.split} split): {error}") from None
    print_tuning(args, labels, scores, value)
    if args.dry_run:
        print(f"dry run: {CARD_FILE} unchanged")
        return 0
    card = read_card(args.model)  # afresh: it may have changed while we were scoring
    thresholds, calibration = thresholds_to_change(card, args.precision)
    setattr(thresholds, args.which, value)
    calibration.pop(f"{args.which}_set_by_hand_at", None)
    calibration |= {
        FPR_KEYS[args.which]: args.target_fpr,
        "split": args.split,
        "scheme": args.scheme,
        "source": args.data,
        "n_ham": int((labels == 0).sum()),
        "n_spam": int((labels == 1).sum()),
        "precision": args.precision,
        "chosen_at": now(),
    }
    write_card(args.model, card)
    print(f"written to {args.model / CARD_FILE}; {RELOAD_HINT}")
    return 0


def print_tuning(
    args: argparse.Namespace, labels: np.ndarray, scores: np.ndarray, value: float
) -> None:
    """The sweep table around the chosen threshold, then what it means in messages."""
    from spamfilter import evaluation
    from spamfilter.report import SWEEP_COLUMNS, markdown_table

    chosen = {**evaluation.at_threshold(labels, scores, value), "chosen": "<-"}
    rows = rows_around(evaluation.sweep(labels, scores, points=50), chosen)
    print(markdown_table(rows, (*SWEEP_COLUMNS, "chosen")))
    n_ham, n_spam = chosen["fp"] + chosen["tn"], chosen["tp"] + chosen["fn"]
    print(
        f"\n{args.which} threshold {value:.6g}: FPR {chosen['fpr']:.4%} ({chosen['fp']} of "
        f"{n_ham} ham), recall {chosen['recall']:.2%} ({chosen['tp']} of {n_spam} spam)"
    )
    if args.target_fpr * n_ham < 1:
        print(
            f"note: {n_ham} ham cannot measure an FPR of {args.target_fpr:g}: "
            "the threshold lets no ham through on this data"
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
    from spamfilter.classifier import Classifier
    from spamfilter.labelled import score_dataset

    dataset = load_data(args, (args.split,))[args.split]
    classifier = Classifier(args.model, precision=args.precision)
    scores = score_dataset(classifier, dataset, args.batch_size)
    return classifier, dataset, np.asarray(dataset["label"]), scores


def load_data(args: argparse.Namespace, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """The named splits of ``args.data``; the evaluated ones sampled down to ``args.limit``.

    The training split is never sampled: a baseline trains on all of it, as the model did.
    """
    from spamfilter.labelled import DataError, load_splits

    try:
        loaded = load_splits(args.data, splits, args.scheme)
    except DataError as error:
        raise CLIError(str(error)) from None
    for split, dataset in loaded.items():
        if len(dataset) == 0:
            raise CLIError(f"{args.data}: the {split} split holds no messages")
        if args.limit and split != "train" and len(dataset) > args.limit:
            loaded[split] = dataset.shuffle(seed=0).select(range(args.limit))
    return loaded


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- eval ---------------------------------------------------------------------------------


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
        choices=BASELINES,
        default=[],
        help="also train this filter on the training split and compare it (repeatable; "
        "bogofilter and spamassassin run on the raw message and on the model's text)",
    )
    parser.set_defaults(command=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    from spamfilter.classifier import Classifier
    from spamfilter.labelled import score_dataset
    from spamfilter.report import Scored, write_report

    if args.baseline and args.split == "all":
        raise CLIError("--baseline needs a split to train on: use --split test or validation")
    splits = ("train", "validation", args.split) if args.baseline else (args.split,)
    loaded = load_data(args, tuple(dict.fromkeys(splits)))
    dataset = loaded[args.split]
    classifier = Classifier(args.model, precision=args.precision)
    started = time.perf_counter()
    scores = score_dataset(classifier, dataset, args.batch_size)
    seconds = time.perf_counter() - started
    thresholds = classifier.thresholds
    labels = np.asarray(dataset["label"])
    model = Scored(classifier.model_id, labels, scores, thresholds.tag, 0.5, seconds)
    target_fpr = classifier.card.calibration.get("target_fpr") or DEFAULT_TARGET_FPR
    baselines, skipped = [], {}
    if args.baseline:
        from spamfilter.baselines.compare import run_baselines

        # The peers train and score for minutes: say what they are doing.
        logging.basicConfig(level=logging.INFO, format="spamfilter: %(message)s")
        train, validation = loaded["train"], loaded["validation"]
        baselines, skipped = run_baselines(args.baseline, train, validation, dataset, target_fpr)
    context = {
        "model": classifier.model_id,
        "model_dir": str(args.model),
        "source": args.data,
        "split": args.split,
        "scheme": args.scheme,
        "precision": args.precision,
        "comparison_target_fpr": target_fpr,
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


# --- export-onnx --------------------------------------------------------------------------


def add_export_onnx_parser(commands) -> None:
    parser = commands.add_parser(
        "export-onnx",
        help="write model.onnx and model.int8.onnx into a model directory",
        formatter_class=HelpFormatter,
        description="Export for --precision onnx-fp32 / onnx-int8 (done on first use anyway; "
        "run it ahead where the model directory is read-only at serving time).",
    )
    add_model_arguments(parser, scoring=False)
    parser.set_defaults(command=export_onnx)


def export_onnx(args: argparse.Namespace) -> int:
    from spamfilter import onnxmodel

    read_card(args.model)  # a model directory this filter can serve, or a one-line error
    for precision, path in onnxmodel.export_onnx(args.model).items():
        print(f"{precision}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


# --- serve --------------------------------------------------------------------------------


def serve(argv: list[str]) -> int:
    """``spamfilter serve``: the daemon's own module defines and runs its flags."""
    from spamfilter.server import add_serve_arguments, run_serve

    parser = argparse.ArgumentParser(
        prog="spamfilter serve",
        description="Run the SMTP content filter.",
        formatter_class=HelpFormatter,
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":  # training runs `python -m spamfilter.cli export-onnx`
    sys.exit(main())
