"""The ``calibration`` section of spamfilter.json: how each threshold was chosen.

The one module that writes and reads it: training records the thresholds it calibrated
on validation, ``spamfilter threshold tune`` and ``set`` record theirs, and ``eval`` and
``threshold show`` read it. The section stays the flat mapping that model directories
already hold: ``target_fpr`` / ``reject_fpr`` / ``quarantine_fpr`` (the false-positive
rate each threshold was tuned for), where the labelled mail came from (``split``,
``scheme``, ``source``, ``n_ham``, ``n_spam``, ...), ``<threshold>_set_by_hand_at`` for a
threshold set by hand, and under ``precisions`` one such mapping for each scoring
precision that has thresholds of its own. Under the threshold's own name (``tag``, ...)
is how it was chosen (``spamfilter.evaluation.operating_point``): ``method``
(``clopper-pearson`` or ``observed``), ``confidence``, ``n_ham``, ``n_spam``,
``false_positives`` at the threshold, ``fpr_upper_bound``, ``bound_met`` and
``ham_needed``. Cards written before these records read as before, without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spamfilter.evaluation.operating_point import OperatingPoint
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
    calibration: Calibration, which: str, point: OperatingPoint | None, **facts: Any
) -> None:
    """Record how threshold ``which`` was chosen (``point``; None: it was not tuned).

    ``facts`` say where the labelled mail came from (``split``, ``source``, ...).
    """
    calibration.pop(f"{which}_set_by_hand_at", None)
    calibration.pop(which, None)
    calibration[FPR_KEYS[which]] = point.target_fpr if point else None
    calibration |= facts
    if point is None:
        return
    calibration |= {"n_ham": point.n_ham, "n_spam": point.n_spam}
    calibration[which] = {
        "method": point.method,
        "confidence": point.confidence,
        "n_ham": point.n_ham,
        "n_spam": point.n_spam,
        "false_positives": point.false_positives,
        "fpr_upper_bound": point.fpr_upper_bound,
        "bound_met": point.bound_met,
        "ham_needed": point.ham_needed,
    }


def record_set_by_hand(calibration: Calibration, which: str, at: str) -> None:
    """Record that threshold ``which`` was set by hand at ``at`` (an ISO time), not tuned."""
    calibration.pop(FPR_KEYS[which], None)  # no longer how this threshold was chosen
    calibration.pop(which, None)
    calibration[f"{which}_set_by_hand_at"] = at


def target_fpr(card: ModelCard) -> float:
    """The false-positive rate the card's tag threshold was tuned for (else the default)."""
    return card.calibration.get("target_fpr") or DEFAULT_TARGET_FPR


def confidence(card: ModelCard) -> float | None:
    """The confidence the card's tag threshold was chosen at (None: not recorded)."""
    return card.calibration.get("tag", {}).get("confidence")


def recorded_point(calibration: Calibration, which: str, threshold: float) -> OperatingPoint | None:
    """How ``threshold`` (threshold ``which``) was chosen, as recorded; None if it was not."""
    record = calibration.get(which)
    if record is None or threshold is None:
        return None
    return OperatingPoint(
        threshold=threshold,
        target_fpr=calibration[FPR_KEYS[which]],
        n_ham=record["n_ham"],
        n_spam=record["n_spam"],
        false_positives=record["false_positives"],
        observed_fpr=record["false_positives"] / record["n_ham"],
        fpr_upper_bound=record["fpr_upper_bound"],
        confidence=record["confidence"],
        bound_met=record["bound_met"],
    )


def statements(card: ModelCard) -> list[str]:
    """What each recorded threshold promises, in words (scoring precisions of their own
    named first)."""
    said = []
    by_precision = card.calibration.get("precisions", {})
    sets = [("", card.thresholds, card.calibration)] + [
        (f"{precision} scores: ", thresholds, by_precision.get(precision, {}))
        for precision, thresholds in card.precision_thresholds.items()
    ]
    for prefix, thresholds, calibration in sets:
        for which in THRESHOLD_NAMES:
            point = recorded_point(calibration, which, getattr(thresholds, which))
            if point is not None:
                said.append(prefix + point.statement(which))
    return said
