"""The policy (``smtp.policy``): thresholds, verdicts and the headers it adds."""

from __future__ import annotations

import pytest

from spamfilter.config import FilterConfig
from spamfilter.model.modeldir import ModelCard, Thresholds
from spamfilter.smtp.policy import Policy, Verdict


def policy(**changes) -> Policy:
    card = ModelCard(max_length=64, thresholds=Thresholds(tag=0.5, reject=0.99, quarantine=0.9))
    config = FilterConfig(model="m", quarantine_dir="/q", **changes)
    return Policy.build(config, card, "m@12345678")


def test_thresholds_come_from_the_card_unless_configured():
    assert (policy().tag, policy().quarantine, policy().reject) == (0.5, 0.9, None)
    assert policy(reject=True, tag_threshold=0.7).reject == 0.99
    assert policy(tag_threshold=0.7).tag == 0.7


def test_thresholds_tuned_for_the_serving_precision_are_used():
    card = ModelCard(
        max_length=64,
        thresholds=Thresholds(tag=0.5),
        precision_thresholds={"onnx-int8": Thresholds(tag=0.8)},
    )
    tags = {
        precision: Policy.build(FilterConfig(model="m", precision=precision), card, "m@1").tag
        for precision in ("onnx-fp32", "fp32", "onnx-int8")
    }
    assert tags == {"onnx-fp32": 0.5, "fp32": 0.5, "onnx-int8": 0.8}


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.1, Verdict.PASS),
        (0.5, Verdict.TAG),
        (0.95, Verdict.QUARANTINE),
        (0.995, Verdict.REJECT),
        (None, Verdict.UNKNOWN),
    ],
)
def test_verdicts(score, verdict):
    assert policy(reject=True).decide(score) is verdict


def test_tempfail_on_scoring_errors_when_configured():
    assert policy(on_score_error="tempfail").decide(None) is Verdict.TEMPFAIL


def test_header_format():
    assert policy(reject=True).headers(0.97312) == (
        b"X-Spam-Flag: YES\r\nX-Spam-Score: 0.973\r\n"
        b"X-Spam-Status: Yes, score=0.973 tag=0.5 quarantine=0.9 reject=0.99 model=m@12345678\r\n"
    )
    assert policy().headers(None) == b"X-Spam-Status: unknown, model=m@12345678\r\n"


def test_quarantine_threshold_without_a_maildir_is_an_error():
    card = ModelCard(max_length=64, thresholds=Thresholds(quarantine=0.9))
    with pytest.raises(ValueError, match="quarantine_dir"):
        Policy.build(FilterConfig(model="m"), card, "m@1")
