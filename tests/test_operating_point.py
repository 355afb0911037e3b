"""Operating points on synthetic scores whose true false-positive rate is known.

Ham scores are Uniform(0, 1), so the true FPR of a threshold ``t`` on new ham is ``1 - t``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spamfilter.evaluation.metrics import threshold_for_fpr
from spamfilter.evaluation.operating_point import (
    fpr_upper_bound,
    ham_needed,
    measured_at,
    operating_point,
)


def draw(rng: np.random.Generator, n_ham: int, n_spam: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Uniform ham, and spam crowding towards 1 (Beta(5, 1)), shuffled together."""
    labels = np.array([0] * n_ham + [1] * n_spam)
    scores = np.concatenate([rng.uniform(0, 1, n_ham), rng.beta(5, 1, n_spam)])
    order = rng.permutation(len(labels))
    return labels[order], scores[order]


def share_within_target(confidence: float, draws: int = 300, target: float = 0.01) -> float:
    """Over seeded draws of 5,000 ham, how often the true FPR at the threshold is in target."""
    held = 0
    for seed in range(draws):
        labels, scores = draw(np.random.default_rng(seed), n_ham=5000)
        point = operating_point(labels, scores, target, confidence)
        held += (1 - point.threshold) <= target
    return held / draws


def test_the_bound_holds_in_about_95_percent_of_draws_and_the_observed_rate_does_not():
    bounded, observed = share_within_target(0.95), share_within_target(0.0)
    assert bounded >= 0.93
    assert observed <= 0.75  # the observed rate overshoots the target about half the time
    assert bounded - observed >= 0.2


def test_the_threshold_is_the_lowest_whose_bound_meets_the_target():
    labels, scores = draw(np.random.default_rng(1), n_ham=5000)
    point = operating_point(labels, scores, 0.01)
    assert point.bound_met and point.method == "clopper-pearson"
    assert point.fpr_upper_bound <= 0.01 < fpr_upper_bound(point.false_positives + 1, 5000, 0.95)
    ham = np.sort(scores[labels == 0])[::-1]
    assert ham[point.false_positives] < point.threshold < ham[point.false_positives - 1]
    # halfway between the two scores around it, so a rounding error does not cross it
    next_higher = scores[scores > ham[point.false_positives]].min()
    assert point.threshold == pytest.approx((ham[point.false_positives] + next_higher) / 2)
    one_lower = measured_at(labels, scores, ham[point.false_positives], 0.01)
    assert not one_lower.bound_met
    assert 0 < point.observed_fpr < point.fpr_upper_bound


def test_too_little_ham_goes_above_every_ham_and_says_how_many_are_needed():
    labels, scores = draw(np.random.default_rng(2), n_ham=100)
    point = operating_point(labels, scores, 0.001)
    assert point.threshold > scores[labels == 0].max()
    assert (point.false_positives, point.bound_met, point.too_little_ham) == (0, False, True)
    assert point.fpr_upper_bound == pytest.approx(1 - 0.05 ** (1 / 100))  # what 100 ham support
    assert point.ham_needed == 2995 == math.ceil(math.log(0.05) / math.log(0.999))
    said = point.statement("tag")
    assert "FPR <= 2.95% at 95% confidence on 100 ham (0 above)" in said
    assert said.endswith("too little ham: the target 0.1% needs >= 2,995 ham")


def test_the_needed_ham_are_exactly_enough():
    for target in (0.01, 0.001):
        needed = ham_needed(target, 0.95)
        assert fpr_upper_bound(0, needed, 0.95) <= target < fpr_upper_bound(0, needed - 1, 0.95)


def test_confidence_0_is_the_observed_rate_of_threshold_for_fpr():
    labels, scores = draw(np.random.default_rng(3), n_ham=1000)
    point = operating_point(labels, scores, 0.01, confidence=0)
    assert point.threshold == threshold_for_fpr(labels, scores, 0.01)
    assert (point.method, point.false_positives, point.fpr_upper_bound) == ("observed", 10, 0.01)
    assert point.statement("tag").endswith("(10 above), within the target 1%")
    small = operating_point(labels[:50], scores[:50], 0.01, confidence=0)
    assert small.too_little_ham and "needs >= 100 ham" in small.statement("tag")
