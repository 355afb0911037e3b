"""Labelled mail for ``spamfilter threshold tune`` and ``spamfilter eval``.

Loading goes through the training data layer (``spamtrain.data``), so the CLI reads a
corpus, deduplicates it and splits it exactly as training did: the validation split
here is the one the model never trained on. That layer needs ``datasets`` (the
``train`` extra); the daemon and ``classify`` do not, so it is imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm import tqdm

from spamfilter.classifier import Classifier
from spamfilter.mailtext import email_to_text

if TYPE_CHECKING:
    from datasets import Dataset

Split = Literal["train", "validation", "test", "all"]
Scheme = Literal["hash", "temporal"]


class DataError(RuntimeError):
    """A labelled source that cannot be loaded or split as asked."""


def load_labelled(source: str, split: Split = "validation", scheme: Scheme = "hash") -> Dataset:
    """Rows ``id, raw, label, source, group`` of ``source``, restricted to one split (or all)."""
    return load_splits(source, (split,), scheme)[split]


def load_splits(
    source: str, splits: Sequence[Split], scheme: Scheme = "hash"
) -> dict[str, Dataset]:
    """Several splits of ``source`` (``all``: every message), reading the source once."""
    try:
        from spamtrain.data import load_source, split_dataset
    except ImportError as error:
        raise DataError(
            f"reading labelled mail needs the training data layer ({error}); "
            "install it with: pip install 'spamfilter[train]'"
        ) from None
    try:
        dataset = load_source(source)
        parts = split_dataset(dataset, scheme=scheme) if set(splits) - {"all"} else {}
        return {split: dataset if split == "all" else parts[split] for split in splits}
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{source}: cannot load the {'/'.join(splits)} split: {error}") from None


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
            scores.extend(classifier.score_texts([email_to_text(raw) for raw in raws], batch_size))
            progress.update(len(raws))
    return np.asarray(scores, dtype=np.float64)
