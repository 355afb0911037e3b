import numpy as np
import pytest

from spamfilter.evaluation.metrics import at_threshold, summary, threshold_for_fpr


def test_threshold_meets_the_target_fpr_and_sits_between_scores():
    labels = [0] * 1000 + [1] * 100
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.6, 1000), rng.uniform(0.4, 1.0, 100)])
    for target in (0.001, 0.01, 0.1):
        threshold = threshold_for_fpr(labels, scores, target)
        metrics = at_threshold(labels, scores, threshold)
        assert metrics["fpr"] <= target
        assert not np.any(np.isclose(scores, threshold, atol=1e-9))  # a margin on both sides
        # one notch lower would break the target: the threshold is as low as allowed
        ham = np.sort(scores[:1000])[::-1]
        assert threshold > ham[int(target * 1000)]


def test_no_false_positive_when_target_is_below_one_ham():
    threshold = threshold_for_fpr([0, 0, 1, 1], [0.2, 0.7, 0.6, 0.9], 0.001)
    assert threshold == pytest.approx(0.8)
    assert at_threshold([0, 0, 1, 1], [0.2, 0.7, 0.6, 0.9], threshold)["recall"] == 0.5


def test_summary_fields():
    result = summary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)
    assert result["tp"] == 1 and result["fn"] == 1 and result["fp"] == 0
    assert result["roc_auc"] == pytest.approx(0.75)
    assert {"recall_at_fpr_0.001", "recall_at_fpr_0.005", "recall_at_fpr_0.01"} <= set(result)


def test_threshold_needs_ham():
    with pytest.raises(ValueError, match="without ham"):
        threshold_for_fpr([1, 1], [0.2, 0.3], 0.01)
