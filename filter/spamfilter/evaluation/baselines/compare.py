"""Train each named baseline on the training split and score it like the model.

Every baseline gets the same treatment as the model: trained on ``train``, threshold
chosen on ``validation`` at the model's target false-positive rate and confidence,
measured on the evaluated messages. A peer that is not installed is reported, not fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING

import numpy as np

from spamfilter.evaluation.baselines import Baseline, BaselineUnavailable, make_baselines
from spamfilter.evaluation.operating_point import operating_point
from spamfilter.evaluation.report import Scored

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


def run_baselines(
    names: Sequence[str],
    train: Dataset,
    validation: Dataset,
    test: Dataset,
    target_fpr: float,
    confidence: float = 0.0,
) -> tuple[list[Scored], dict[str, str]]:
    """The scored runs of every baseline in ``names``, and why each skipped one was skipped."""
    runs: list[Scored] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            baselines = make_baselines(name)
        except BaselineUnavailable as error:
            log.warning("baseline %s skipped: %s", name, error)
            skipped[name] = str(error)
            continue
        for baseline in baselines:
            with closing(baseline):
                runs.append(
                    score_baseline(baseline, train, validation, test, target_fpr, confidence)
                )
    return runs, skipped


def score_baseline(
    baseline: Baseline,
    train: Dataset,
    validation: Dataset,
    test: Dataset,
    target_fpr: float,
    confidence: float,
) -> Scored:
    started = time.perf_counter()
    baseline.fit(train["raw"], train["label"])
    log.info("%s: trained on %d messages in %.1f s", baseline.name, len(train), _since(started))
    threshold = operating_point(
        validation["label"], baseline.score(validation["raw"]), target_fpr, confidence
    ).threshold
    started = time.perf_counter()
    scores = baseline.score(test["raw"])
    seconds = _since(started)
    log.info("%s: scored %d messages in %.1f s", baseline.name, len(test), seconds)
    return Scored(
        baseline.name,
        np.asarray(test["label"]),
        scores,
        threshold=threshold,
        native_threshold=baseline.native_threshold,
        seconds=seconds,
    )


def _since(started: float) -> float:
    return time.perf_counter() - started
