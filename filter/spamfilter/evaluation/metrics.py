"""Spam-filter metrics from labels (1 = spam) and scores (P(spam)).

Shared by training (validation metrics), ``spamfilter threshold tune`` and ``spamfilter
eval``, so every figure in the project means the same thing; thresholds for new mail come
from ``operating_point``.
A false positive is ham scored at or above the threshold: the error that loses a user's
mail, so thresholds are chosen for a target false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from spamfilter.evaluation.operating_point import operating_point

REPORTED_FPRS = (0.001, 0.005, 0.01)


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    predicted = scores >= threshold
    spam = labels == 1
    return {
        "tp": int(np.sum(predicted & spam)),
        "fp": int(np.sum(predicted & ~spam)),
        "tn": int(np.sum(~predicted & ~spam)),
        "fn": int(np.sum(~predicted & spam)),
    }


def at_threshold(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict:
    """Accuracy, precision, recall, F1 and FPR when messages at or above ``threshold`` are spam."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    counts = confusion(y, s, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "threshold": threshold,
        "accuracy": (tp + tn) / max(len(y), 1),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        **counts,
    }


def threshold_for_fpr(labels: Sequence[int], scores: Sequence[float], target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on this data is at most ``target_fpr``.

    The observed rate, no confidence bound: how ``recall_at_fpr`` measures evaluation data.
    An operating point for new mail comes from ``operating_point`` with a confidence.
    """
    return operating_point(labels, scores, target_fpr, confidence=0).threshold


def recall_at_fpr(labels: Sequence[int], scores: Sequence[float], target_fpr: float) -> float:
    threshold = threshold_for_fpr(labels, scores, target_fpr)
    return at_threshold(labels, scores, threshold)["recall"]


def summary(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict:
    """All headline figures: metrics at ``threshold``, ROC-AUC, PR-AUC, recall at set FPRs."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    both_classes = len(set(y.tolist())) == 2
    result = at_threshold(y, s, threshold)
    result["n"] = len(y)
    result["n_spam"] = int(np.sum(y == 1))
    result["roc_auc"] = float(roc_auc_score(y, s)) if both_classes else float("nan")
    result["pr_auc"] = float(average_precision_score(y, s)) if both_classes else float("nan")
    for fpr in REPORTED_FPRS:
        key = f"recall_at_fpr_{fpr:g}"
        result[key] = recall_at_fpr(y, s, fpr) if both_classes else float("nan")
    return result


def sweep(labels: Sequence[int], scores: Sequence[float], points: int = 20) -> list[dict]:
    """Metrics at thresholds spread over the ROC curve's own cut points (for tables/plots)."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    _, _, cuts = roc_curve(y, s)
    cuts = np.unique(np.clip(cuts, 0.0, 1.0))
    if len(cuts) > points:
        cuts = cuts[np.linspace(0, len(cuts) - 1, points).round().astype(int)]
    return [at_threshold(y, s, float(cut)) for cut in cuts]
