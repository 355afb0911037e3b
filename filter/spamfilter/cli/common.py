"""What several subcommands share: errors, help layout, argument groups, labelled mail.

Labelled mail is read through the training data layer (``spamtrain.data.load_splits``),
so the CLI reads a corpus, deduplicates it and splits it exactly as training did: the
validation split here is the one the model never trained on. That layer needs
``datasets`` (the ``train`` extra); the daemon and ``classify`` do not, so it is imported
only when a command reads labelled mail.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from spamfilter.evaluation.operating_point import confidence_problem
from spamfilter.model.modeldir import probability_problem
from spamfilter.model.precision import (
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    PRECISIONS,
    device_problem,
)

if TYPE_CHECKING:
    from datasets import Dataset

    from spamfilter.model.classifier import Classifier

EXIT_ERROR = 2
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


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (thresholds, target FPRs)."""
    return checked_number(text, probability_problem)


def confidence_level(text: str) -> float:
    """argparse type: a confidence level, 0 <= c < 1 (0: no bound)."""
    return checked_number(text, confidence_problem)


def checked_number(text: str, problem_of: Callable[[str, float], str | None]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if problem := problem_of("it", value):
        raise argparse.ArgumentTypeError(problem)
    return value


def device(text: str) -> str:
    """argparse type: a scoring device (auto, cpu, cuda, cuda:N)."""
    if problem := device_problem("it", text):
        raise argparse.ArgumentTypeError(problem)
    return text


def add_model_arguments(parser: argparse.ArgumentParser, scoring: bool) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    if scoring:
        add_precision_argument(parser)
        parser.add_argument(
            "--device",
            type=device,
            default=DEFAULT_DEVICE,
            help="where to score: auto (a CUDA GPU if torch sees one, else the CPU), cpu, "
            "cuda, cuda:N",
        )


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="ONNX Runtime fp32 or int8 (onnx-*: exported into the model directory if "
        "missing), or PyTorch fp32, bf16 autocast or int8 dynamic quantization; auto: "
        "onnx-int8 on CPUs with int8 dot products (VNNI, AMX; it is refused elsewhere), else "
        "onnx-fp32, and fp32 on a GPU; the thresholds used are the ones tuned for it, else fp32's",
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


# --- labelled mail -----------------------------------------------------------------------


def load_data(args: argparse.Namespace, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """The named splits of ``args.data``; the evaluated ones sampled down to ``args.limit``.

    The training split is never sampled: a baseline trains on all of it, as the model did.
    """
    try:
        from spamtrain.data import DataError, load_splits
    except ImportError as error:
        raise CLIError(
            f"reading labelled mail needs the training data layer ({error}); "
            "install it with: pip install 'spamfilter[train]'"
        ) from None
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


def score_dataset(classifier: Classifier, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """P(spam) for every row of ``dataset`` (its ``raw`` column), in row order.

    Scored in chunks of a few batches so the progress bar moves and only one chunk's
    texts are in memory; each chunk is length-sorted by the classifier.
    """
    chunk = batch_size * 8
    scores: list[float] = []
    with tqdm(total=len(dataset), unit="msg", desc="scoring", disable=None) as progress:
        for start in range(0, len(dataset), chunk):
            raws = dataset[start : start + chunk]["raw"]
            scores.extend(classifier.score_raw(raws, batch_size))
            progress.update(len(raws))
    return np.asarray(scores, dtype=np.float64)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
