"""Operating points: the threshold for a target false-positive rate, with a stated bound.

A threshold chosen so that at most ``target * n`` of ``n`` ham score above it promises
nothing about new ham: with 426 ham and a target of 0.1 % it sits just above the single
highest-scoring one, and new ham cross it at a rate near ``1/427``. So the threshold is
the lowest at which the one-sided Clopper-Pearson upper bound on the FPR (``k`` ham at or
above it among ``n``) is at most the target, at a stated confidence (default 95 %): over
many draws of calibration ham, the true FPR at the chosen threshold exceeds the target in
at most 5 % of them. Even ``k = 0`` meets the target only when
``n >= ln(1 - confidence) / ln(1 - target)`` (about ``3 / target`` at 95 %); with fewer
ham the threshold goes above every ham, and the result says the bound is not met, which
FPR the ham do support and how many the target needs. Confidence 0 asks for the observed
rate alone (at most ``floor(target * n)`` ham above), which is also how ``recall_at_fpr``
measures: a measurement on evaluation data, not an operating point.

scipy (which scikit-learn brings) is imported only when a bound is computed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_CONFIDENCE = 0.95
BOUNDED, OBSERVED = "clopper-pearson", "observed"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what the ham it was chosen on say about its false-positive rate."""

    threshold: float
    target_fpr: float
    n_ham: int
    n_spam: int
    false_positives: int  # ham at or above the threshold
    observed_fpr: float
    fpr_upper_bound: float  # the Clopper-Pearson bound at ``confidence``; 0: the observed rate
    confidence: float
    bound_met: bool  # fpr_upper_bound <= target_fpr

    @property
    def method(self) -> str:
        return BOUNDED if self.confidence > 0 else OBSERVED

    @property
    def ham_needed(self) -> int:
        """The fewest ham on which the target can be met at all (with no ham above)."""
        return ham_needed(self.target_fpr, self.confidence)

    @property
    def too_little_ham(self) -> bool:
        return self.n_ham < self.ham_needed

    def statement(self, which: str) -> str:
        """What the threshold promises, in words, e.g. ``tag threshold 0.99: FPR <= 0.70% at
        95% confidence on 426 ham (0 above); too little ham: the target 0.1% needs >= 2,995
        ham``."""
        on = f"on {self.n_ham:,} ham ({self.false_positives:,} above)"
        if self.method == BOUNDED:
            bound = f"FPR <= {self.fpr_upper_bound:.2%} at {percent(self.confidence)} confidence"
        else:
            bound = f"FPR {self.observed_fpr:.2%} observed"
        said = f"{which} threshold {self.threshold:.6g}: {bound} {on}"
        target = percent(self.target_fpr)
        if self.too_little_ham:
            return f"{said}; too little ham: the target {target} needs >= {self.ham_needed:,} ham"
        if not self.bound_met:
            return f"{said}; above the target {target}"
        return f"{said}, within the target {target}"


def percent(rate: float) -> str:
    return f"{rate * 100:g}%"


def confidence_problem(name: str, value: float | None) -> str | None:
    """Why ``value`` cannot be a confidence level, or None if it can (or is unset)."""
    if value is None or 0.0 <= value < 1.0:
        return None
    return f"{name} must lie in [0, 1) (0: the observed rate, no bound), not {value}"


def ham_needed(target_fpr: float, confidence: float) -> int:
    """The fewest ham on which ``target_fpr`` can be met with none of them above.

    Bounded: ``(1 - target)^n <= 1 - confidence``. Observed: one ham above must be a rate
    within the target, ``n >= 1 / target``.
    """
    if confidence == 0:
        return math.ceil(1 / target_fpr)
    return math.ceil(math.log1p(-confidence) / math.log1p(-target_fpr))


def fpr_upper_bound(false_positives: int, n_ham: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on the FPR at ``confidence`` (0: ``k / n``)."""
    if confidence == 0:
        return false_positives / n_ham
    if false_positives >= n_ham:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, false_positives + 1, n_ham - false_positives))


def operating_point(
    labels: Sequence[int],
    scores: Sequence[float],
    target_fpr: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OperatingPoint:
    """The lowest threshold whose FPR bound on these ham is at most ``target_fpr``.

    It lies halfway between the highest ham score that must stay below it and the next
    higher score, so recall is as high as the bound allows and a score that moves by a
    rounding error (another batch's padding, another backend) does not cross it. When no
    threshold meets the bound it goes above every ham (``bound_met`` is then False).
    """
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    ham = np.sort(s[y == 0])[::-1]
    if len(ham) == 0:
        raise ValueError("cannot choose a threshold for a false-positive rate without ham")
    # The bound grows with k: the first k past the target, less one, is the most allowed.
    allowed = bisect.bisect_right(
        range(len(ham) + 1),
        target_fpr,
        key=lambda k: fpr_upper_bound(k, len(ham), confidence),
    )
    allowed = max(allowed - 1, 0)  # none allowed, or none meets it: above every ham
    return measured_at(y, s, halfway_above(s, ham, allowed), target_fpr, confidence)


def halfway_above(scores: np.ndarray, ham_descending: np.ndarray, allowed: int) -> float:
    """A threshold with at most ``allowed`` ham at or above it, halfway to the next score."""
    if allowed >= len(ham_descending):
        return float(np.nextafter(0.0, 1.0))
    boundary = ham_descending[allowed]  # the highest ham score that must stay below
    above = scores[scores > boundary]
    threshold = (boundary + above.min()) / 2 if above.size else np.nextafter(boundary, 1.0)
    return float(min(max(threshold, np.nextafter(0.0, 1.0)), np.nextafter(1.0, 0.0)))


def measured_at(
    labels: Sequence[int],
    scores: Sequence[float],
    threshold: float,
    target_fpr: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OperatingPoint:
    """What these labelled scores say about the FPR at ``threshold``."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    n_ham = int(np.sum(y == 0))
    false_positives = int(np.sum((y == 0) & (s >= threshold)))
    bound = fpr_upper_bound(false_positives, n_ham, confidence)
    return OperatingPoint(
        threshold=threshold,
        target_fpr=target_fpr,
        n_ham=n_ham,
        n_spam=int(np.sum(y == 1)),
        false_positives=false_positives,
        observed_fpr=false_positives / n_ham,
        fpr_upper_bound=bound,
        confidence=confidence,
        bound_met=bound <= target_fpr,
    )
