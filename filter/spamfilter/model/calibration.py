"""The ``calibration`` section of spamfilter.json: how each threshold was chosen.

The one module that writes and reads it: training records the thresholds it calibrated
on validation, ``spamfilter threshold tune`` and ``set`` record theirs, and ``eval`` and
``threshold show`` read it. The section stays the flat mapping that model directories
already hold: ``target_fpr`` / ``reject_fpr`` / ``quarantine_fpr`` (the false-positive
rate each threshold was tuned for), where the labelled mail came from (``split``,
``scheme``, ``source``, ``n_ham``, ``n_spam``, ...), ``<threshold>_set_by_hand_at`` for a
threshold set by hand, and under ``precisions`` one such mapping for each scoring
precision that has thresholds of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from spamfilter.model.modeldir import ModelCard, Thresholds
from spamfilter.model.precision import SHARES_FP32_THRESHOLDS

# The share of ham a threshold may let through when nothing else is said: the default
# of training's ``target_fpr`` and of ``spamfilter threshold tune --target-fpr``.
DEFAULT_TARGET_FPR = 0.001
# For each threshold, the key that says which false-positive rate it was tuned for.
FPR_KEYS = {"tag": "target_fpr", "reject": "reject_fpr", "quarantine": "quarantine_fpr"}
THRESHOLD_NAMES = tuple(FPR_KEYS)

Calibration = dict[str, Any]


def thresholds_to_change(card: ModelCard, precision: str) -> tuple[Thresholds, Calibration]:
    """The thresholds a change for scores in ``precision`` goes to, and their calibration.

    fp32 and its equivalents change the card's thresholds; another precision gets its own,
    starting as a copy of fp32's.
    """
    if precision in SHARES_FP32_THRESHOLDS:
        return card.thresholds, card.calibration
    if precision not in card.precision_thresholds:
        card.precision_thresholds[precision] = dataclasses.replace(card.thresholds)
    by_precision = card.calibration.setdefault("precisions", {})
    return card.precision_thresholds[precision], by_precision.setdefault(precision, {})


def record_tuned(
    calibration: Calibration,
    which: str,
    target_fpr: float | None,
    labels: Sequence[int],
    **facts: Any,
) -> None:
    """Record that threshold ``which`` was tuned for ``target_fpr`` on mail with ``labels``.

    ``facts`` say where that mail came from (``split``, ``source``, ...).
    """
    labels = list(labels)
    calibration.pop(f"{which}_set_by_hand_at", None)
    calibration |= {
        FPR_KEYS[which]: target_fpr,
        **facts,
        "n_ham": labels.count(0),
        "n_spam": labels.count(1),
    }


def record_set_by_hand(calibration: Calibration, which: str, at: str) -> None:
    """Record that threshold ``which`` was set by hand at ``at`` (an ISO time), not tuned."""
    calibration.pop(FPR_KEYS[which], None)  # no longer how this threshold was chosen
    calibration[f"{which}_set_by_hand_at"] = at


def target_fpr(card: ModelCard) -> float:
    """The false-positive rate the card's tag threshold was tuned for (else the default)."""
    return card.calibration.get("target_fpr") or DEFAULT_TARGET_FPR


def too_little_ham(n_ham: int, target_fpr: float) -> str | None:
    """Why ``n_ham`` ham cannot measure ``target_fpr``, or None when they can.

    With ``n`` ham an FPR below ``1/n`` means no false positive at all on them; the
    share of new ham above the highest of ``n`` is then about ``1/(n + 1)``.
    """
    if target_fpr * n_ham >= 1:
        return None
    return (
        f"{n_ham} ham cannot measure an FPR of {target_fpr:g} (that takes "
        f"{math.ceil(1 / target_fpr):,}): the threshold lets none of them through, and new "
        f"ham may be tagged at a rate near 1/{n_ham + 1} ({1 / (n_ham + 1):.1%})"
    )
